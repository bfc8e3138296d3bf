// A Java workload talking to the SPIFFE Workload API with grpc-java (the
// grpc-netty transport), the way java-spiffe does: a Netty channel on the Unix
// socket, the socket path as the HTTP/2 `:authority`, and the security header
// on every call. Debian's Netty ships without its native epoll library, so the
// Unix socket under Netty's NIO transport is the JDK's own (UnixChannel below).
//
// Usage (the socket comes from SPIFFE_ENDPOINT_SOCKET, `unix:` prefix allowed):
//   java WorkloadClient x509 OUT_DIR   write chain.pem and bundle.pem; print
//                                      spiffe_id=..., chain_len=..., authority=...
//   java WorkloadClient jwt AUDIENCE   print the JWT-SVID's token
//   java WorkloadClient validate TOKEN AUDIENCE
//                                      print spiffe_id=... from ValidateJWTSVID
//   java WorkloadClient expect-denied  exit 0 only on PermissionDenied
//
// Any other failure prints the gRPC status and exits 1.

import io.grpc.ManagedChannel;
import io.grpc.Metadata;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.grpc.netty.NettyChannelBuilder;
import io.grpc.stub.MetadataUtils;
import io.netty.buffer.ByteBuf;
import io.netty.channel.ChannelConfig;
import io.netty.channel.ChannelFuture;
import io.netty.channel.ChannelOption;
import io.netty.channel.DefaultChannelConfig;
import io.netty.channel.EventLoopGroup;
import io.netty.channel.FileRegion;
import io.netty.channel.RecvByteBufAllocator;
import io.netty.channel.nio.AbstractNioByteChannel;
import io.netty.channel.nio.NioEventLoopGroup;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.net.SocketAddress;
import java.net.StandardProtocolFamily;
import java.net.UnixDomainSocketAddress;
import java.nio.channels.SelectionKey;
import java.nio.channels.SocketChannel;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Base64;
import java.util.Iterator;
import java.util.concurrent.TimeUnit;

public final class WorkloadClient {
  private static final Metadata.Key<String> SECURITY_HEADER =
      Metadata.Key.of("workload.spiffe.io", Metadata.ASCII_STRING_MARSHALLER);

  public static void main(String[] args) throws Exception {
    if (args.length == 0) {
      usage();
    }
    String socket = System.getenv("SPIFFE_ENDPOINT_SOCKET");
    if (socket == null || socket.isEmpty()) {
      System.err.println("SPIFFE_ENDPOINT_SOCKET is not set");
      System.exit(2);
    }
    if (socket.startsWith("unix://")) {
      socket = socket.substring("unix://".length());
    } else if (socket.startsWith("unix:")) {
      socket = socket.substring("unix:".length());
    }

    EventLoopGroup group = new NioEventLoopGroup(1);
    ManagedChannel channel =
        NettyChannelBuilder.forAddress(new PathAddress(socket))
            .channelFactory(UnixChannel::new)
            .eventLoopGroup(group)
            .usePlaintext()
            .build();
    try {
      Metadata headers = new Metadata();
      headers.put(SECURITY_HEADER, "true");
      SpiffeWorkloadAPIGrpc.SpiffeWorkloadAPIBlockingStub stub =
          SpiffeWorkloadAPIGrpc.newBlockingStub(channel)
              .withInterceptors(MetadataUtils.newAttachHeadersInterceptor(headers))
              .withDeadlineAfter(20, TimeUnit.SECONDS);
      switch (args[0]) {
        case "x509" -> x509(stub, channel.authority(), arg(args, 1));
        case "jwt" -> jwt(stub, arg(args, 1));
        case "validate" -> validate(stub, arg(args, 1), arg(args, 2));
        case "expect-denied" -> expectDenied(stub);
        default -> usage();
      }
    } catch (StatusRuntimeException e) {
      System.err.println("Workload API call failed: " + e.getStatus());
      System.exit(1);
    } finally {
      channel.shutdownNow().awaitTermination(5, TimeUnit.SECONDS);
      group.shutdownGracefully(0, 1, TimeUnit.SECONDS);
    }
  }

  private static void x509(
      SpiffeWorkloadAPIGrpc.SpiffeWorkloadAPIBlockingStub stub, String authority, String outDir)
      throws IOException {
    Iterator<Workload.X509SVIDResponse> stream =
        stub.fetchX509SVID(Workload.X509SVIDRequest.getDefaultInstance());
    Workload.X509SVIDResponse first = stream.next();
    if (first.getSvidsCount() == 0) {
      System.err.println("the first X509SVIDResponse holds no SVID");
      System.exit(1);
    }
    Workload.X509SVID svid = first.getSvids(0);
    Path dir = Path.of(outDir);
    Files.createDirectories(dir);
    int chainLen = writePem(dir.resolve("chain.pem"), svid.getX509Svid().toByteArray());
    writePem(dir.resolve("bundle.pem"), svid.getBundle().toByteArray());
    System.out.println("spiffe_id=" + svid.getSpiffeId());
    System.out.println("chain_len=" + chainLen);
    System.out.println("key_len=" + svid.getX509SvidKey().size());
    System.out.println("authority=" + authority);
  }

  private static void jwt(SpiffeWorkloadAPIGrpc.SpiffeWorkloadAPIBlockingStub stub, String audience) {
    Workload.JWTSVIDResponse resp =
        stub.fetchJWTSVID(Workload.JWTSVIDRequest.newBuilder().addAudience(audience).build());
    if (resp.getSvidsCount() == 0) {
      System.err.println("the JWTSVIDResponse holds no SVID");
      System.exit(1);
    }
    System.out.println(resp.getSvids(0).getSvid());
  }

  private static void validate(
      SpiffeWorkloadAPIGrpc.SpiffeWorkloadAPIBlockingStub stub, String token, String audience) {
    Workload.ValidateJWTSVIDResponse resp =
        stub.validateJWTSVID(
            Workload.ValidateJWTSVIDRequest.newBuilder()
                .setSvid(token)
                .setAudience(audience)
                .build());
    System.out.println("spiffe_id=" + resp.getSpiffeId());
  }

  private static void expectDenied(SpiffeWorkloadAPIGrpc.SpiffeWorkloadAPIBlockingStub stub) {
    try {
      stub.fetchX509SVID(Workload.X509SVIDRequest.getDefaultInstance()).next();
    } catch (StatusRuntimeException e) {
      if (e.getStatus().getCode() == Status.Code.PERMISSION_DENIED) {
        System.out.println("denied: " + e.getStatus().getDescription());
        return;
      }
      throw e;
    }
    System.err.println("expected PermissionDenied, got an SVID");
    System.exit(1);
  }

  /** Writes concatenated DER certificates as PEM; returns how many there were. */
  private static int writePem(Path file, byte[] der) throws IOException {
    StringBuilder pem = new StringBuilder();
    int count = 0;
    int at = 0;
    while (at < der.length) {
      int len = derLength(der, at);
      byte[] one = java.util.Arrays.copyOfRange(der, at, at + len);
      pem.append("-----BEGIN CERTIFICATE-----\n")
          .append(Base64.getMimeEncoder(64, "\n".getBytes(StandardCharsets.US_ASCII)).encodeToString(one))
          .append("\n-----END CERTIFICATE-----\n");
      at += len;
      count++;
    }
    Files.writeString(file, pem.toString());
    return count;
  }

  /** The full length (tag, length and content) of the DER SEQUENCE at `at`. */
  private static int derLength(byte[] der, int at) {
    if (der[at] != 0x30 || at + 2 > der.length) {
      throw new IllegalArgumentException("not a DER SEQUENCE at offset " + at);
    }
    int first = der[at + 1] & 0xff;
    if (first < 0x80) {
      return 2 + first;
    }
    int n = first & 0x7f;
    int len = 0;
    for (int i = 0; i < n; i++) {
      len = (len << 8) | (der[at + 2 + i] & 0xff);
    }
    return 2 + n + len;
  }

  /**
   * A Netty NIO channel on a JDK Unix-domain socket (Java 16+), connecting to a
   * PathAddress: what Netty's own epoll DomainSocketChannel provides when its
   * native library is present.
   */
  private static final class UnixChannel extends AbstractNioByteChannel {
    private final ChannelConfig config =
        new DefaultChannelConfig(this) {
          // grpc-netty asks every channel for SO_KEEPALIVE; a Unix socket has none.
          @Override
          public <T> boolean setOption(ChannelOption<T> option, T value) {
            return option == ChannelOption.SO_KEEPALIVE || super.setOption(option, value);
          }
        };
    private volatile SocketAddress remote;

    UnixChannel() {
      super(null, openUnixChannel());
    }

    @Override
    protected SocketChannel javaChannel() {
      return (SocketChannel) super.javaChannel();
    }

    @Override
    public ChannelConfig config() {
      return config;
    }

    @Override
    public boolean isActive() {
      SocketChannel ch = javaChannel();
      return ch.isOpen() && ch.isConnected();
    }

    @Override
    protected boolean doConnect(SocketAddress remote, SocketAddress local) throws Exception {
      if (!(remote instanceof PathAddress path)) {
        throw new IllegalArgumentException("not a Unix socket path: " + remote);
      }
      boolean done = false;
      try {
        boolean connected = javaChannel().connect(UnixDomainSocketAddress.of(path.toString()));
        if (!connected) {
          selectionKey().interestOps(SelectionKey.OP_CONNECT);
        }
        this.remote = remote;
        done = true;
        return connected;
      } finally {
        if (!done) {
          doClose();
        }
      }
    }

    @Override
    protected void doFinishConnect() throws Exception {
      if (!javaChannel().finishConnect()) {
        throw new IOException("connect did not finish");
      }
    }

    @Override
    protected int doReadBytes(ByteBuf buf) throws Exception {
      RecvByteBufAllocator.Handle handle = unsafe().recvBufAllocHandle();
      handle.attemptedBytesRead(buf.writableBytes());
      return buf.writeBytes(javaChannel(), handle.attemptedBytesRead());
    }

    @Override
    protected int doWriteBytes(ByteBuf buf) throws Exception {
      return buf.readBytes(javaChannel(), buf.readableBytes());
    }

    @Override
    protected long doWriteFileRegion(FileRegion region) {
      throw new UnsupportedOperationException("file regions");
    }

    @Override
    protected ChannelFuture shutdownInput() {
      try {
        javaChannel().shutdownInput();
        return newSucceededFuture();
      } catch (IOException e) {
        return newFailedFuture(e);
      }
    }

    @Override
    protected SocketAddress localAddress0() {
      return null;
    }

    @Override
    protected SocketAddress remoteAddress0() {
      return remote;
    }

    @Override
    protected void doBind(SocketAddress local) {
      throw new UnsupportedOperationException("bind");
    }

    @Override
    protected void doDisconnect() throws Exception {
      doClose();
    }

    @Override
    protected void doClose() throws Exception {
      javaChannel().close();
    }
  }

  private static SocketChannel openUnixChannel() {
    try {
      return SocketChannel.open(StandardProtocolFamily.UNIX);
    } catch (IOException e) {
      throw new UncheckedIOException(e);
    }
  }

  private static String arg(String[] args, int i) {
    if (args.length <= i) {
      usage();
    }
    return args[i];
  }

  private static void usage() {
    System.err.println("usage: WorkloadClient x509 DIR | jwt AUDIENCE | validate TOKEN AUDIENCE | expect-denied");
    System.exit(2);
  }

  /**
   * The socket's address. grpc-netty takes a non-IP address's toString() as the
   * `:authority`, so this prints the bare path, as Netty's own
   * DomainSocketAddress does; UnixChannel connects to that path.
   */
  private static final class PathAddress extends SocketAddress {
    private final String path;

    PathAddress(String path) {
      this.path = path;
    }

    @Override
    public String toString() {
      return path;
    }
  }
}
