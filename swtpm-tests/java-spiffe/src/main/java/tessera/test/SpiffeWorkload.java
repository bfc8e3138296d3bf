// A workload built on java-spiffe, the Workload API library and TLS provider Java
// services use: Tessera's end-to-end tests run it against Tessera's agent to show
// that what the agent serves is what java-spiffe accepts, through the library's
// own sources, validators and SSLContext. The agent's socket comes from
// SPIFFE_ENDPOINT_SOCKET, read by java-spiffe itself.
//
// The commands and their output are those of swtpm-tests/go-spiffe/main.go, so
// the tests drive both the same way:
//
//   java tessera.test.SpiffeWorkload [--as SPIFFE_ID] COMMAND ARGS...
//     x509 DIR | bundles DIR | jwt AUDIENCE | validate TOKEN AUDIENCE
//     | watch COUNT SECONDS | serve PEER_ID | dial ADDR SERVER_ID | expect-denied
//
// Output is `key=value` lines (an `update` line holds several space-separated
// pairs). Failures go to standard error as `error: ...` with exit status 1.

package tessera.test;

import io.spiffe.bundle.jwtbundle.JwtBundle;
import io.spiffe.bundle.jwtbundle.JwtBundleSet;
import io.spiffe.bundle.x509bundle.X509Bundle;
import io.spiffe.bundle.x509bundle.X509BundleSet;
import io.spiffe.provider.SpiffeSslContextFactory;
import io.spiffe.provider.SpiffeSslContextFactory.SslContextOptions;
import io.spiffe.spiffeid.SpiffeId;
import io.spiffe.svid.jwtsvid.JwtSvid;
import io.spiffe.svid.x509svid.X509Svid;
import io.spiffe.svid.x509svid.X509SvidValidator;
import io.spiffe.workloadapi.DefaultJwtSource;
import io.spiffe.workloadapi.DefaultWorkloadApiClient;
import io.spiffe.workloadapi.DefaultX509Source;
import io.spiffe.workloadapi.DefaultX509Source.X509SourceOptions;
import io.spiffe.workloadapi.JwtSource;
import io.spiffe.workloadapi.JwtSourceOptions;
import io.spiffe.workloadapi.Watcher;
import io.spiffe.workloadapi.WorkloadApiClient;
import io.spiffe.workloadapi.X509Context;
import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStreamReader;
import java.io.OutputStreamWriter;
import java.io.PrintStream;
import java.io.Writer;
import java.net.InetAddress;
import java.net.Socket;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.cert.Certificate;
import java.security.cert.CertificateEncodingException;
import java.security.cert.X509Certificate;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Base64;
import java.util.Collection;
import java.util.HashSet;
import java.util.List;
import java.util.Set;
import java.util.TreeSet;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;
import java.util.logging.Level;
import java.util.logging.Logger;
import javax.net.ssl.SSLContext;
import javax.net.ssl.SSLServerSocket;
import javax.net.ssl.SSLSocket;

public final class SpiffeWorkload {
  /** How long one-shot commands wait for the agent. */
  private static final Duration CALL_TIMEOUT = Duration.ofSeconds(30);

  /** The SPIFFE ID to act as (--as), or null for the agent's default SVID. */
  private static SpiffeId as;

  /** Standard output, flushed line by line (serve is read while it runs). */
  private static final PrintStream OUT = new PrintStream(System.out, true, StandardCharsets.UTF_8);

  /**
   * java-spiffe logs every update at INFO on standard error; warnings are enough
   * here. Held so the setting is not collected with the logger.
   */
  private static final Logger LIBRARY_LOG = Logger.getLogger("io.spiffe");

  private SpiffeWorkload() {}

  public static void main(String[] argv) {
    LIBRARY_LOG.setLevel(Level.WARNING);
    List<String> args = new ArrayList<>(List.of(argv));
    if (args.size() >= 2 && (args.get(0).equals("--as") || args.get(0).equals("-as"))) {
      as = parseId(args.get(1));
      args = args.subList(2, args.size());
    }
    if (args.isEmpty()) {
      usage();
    }
    String cmd = args.get(0);
    List<String> rest = args.subList(1, args.size());
    try {
      switch (cmd + "/" + rest.size()) {
        case "x509/1" -> x509(Path.of(rest.get(0)));
        case "bundles/1" -> bundles(Path.of(rest.get(0)));
        case "jwt/1" -> jwt(rest.get(0));
        case "validate/2" -> validate(rest.get(0), rest.get(1));
        case "watch/2" -> watch(number(rest.get(0), "COUNT"), number(rest.get(1), "SECONDS"));
        case "serve/1" -> serve(parseId(rest.get(0)));
        case "dial/2" -> dial(rest.get(0), parseId(rest.get(1)));
        case "expect-denied/0" -> expectDenied();
        default -> usage();
      }
    } catch (Exception e) {
      fail(describe(e));
    }
    // The library's gRPC threads would keep the JVM alive.
    System.exit(0);
  }

  /** An X509Source that picks the --as SVID when one is given. */
  private static DefaultX509Source x509Source() throws Exception {
    X509SourceOptions.Builder options = X509SourceOptions.builder().initTimeout(CALL_TIMEOUT);
    if (as != null) {
      options.svidPicker(
          svids -> {
            for (X509Svid s : svids) {
              if (s.getSpiffeId().equals(as)) {
                return s;
              }
            }
            fail("the agent sent no X509-SVID for " + as);
            return null;
          });
    }
    return DefaultX509Source.newSource(options.build());
  }

  private static JwtSource jwtSource() throws Exception {
    return DefaultJwtSource.newSource(JwtSourceOptions.builder().initTimeout(CALL_TIMEOUT).build());
  }

  private static void x509(Path dir) throws Exception {
    try (DefaultX509Source src = x509Source()) {
      X509Svid svid = src.getX509Svid();
      X509Bundle bundle = src.getBundleForTrustDomain(svid.getSpiffeId().getTrustDomain());
      // The library's own path validation, against the bundles the agent sent.
      X509SvidValidator.verifyChain(svid.getChain(), src);
      Files.createDirectories(dir);
      writeCerts(dir.resolve("chain.pem"), svid.getChain());
      writeCerts(dir.resolve("bundle.pem"), bundle.getX509Authorities());
      say("spiffe_id", svid.getSpiffeId().toString());
      say("chain_len", Integer.toString(svid.getChain().size()));
      say("bundle_len", Integer.toString(bundle.getX509Authorities().size()));
      say("verified", svid.getSpiffeId().toString());
      say("not_after", Long.toString(svid.getLeaf().getNotAfter().getTime() / 1000));
      say("hint", svid.getHint() == null ? "" : svid.getHint());
    }
  }

  private static void bundles(Path dir) throws Exception {
    Files.createDirectories(dir);
    try (WorkloadApiClient client = DefaultWorkloadApiClient.newClient()) {
      X509BundleSet x509 = client.fetchX509Bundles();
      for (X509Bundle b : x509.getBundles().values()) {
        String td = b.getTrustDomain().getName();
        writeCerts(dir.resolve(td + ".x509.pem"), b.getX509Authorities());
        OUT.println("x509_bundle td=" + td + " authorities=" + b.getX509Authorities().size());
      }
      JwtBundleSet jwt = client.fetchJwtBundles();
      for (JwtBundle b : jwt.getBundles().values()) {
        String kids = String.join(",", new TreeSet<>(b.getJwtAuthorities().keySet()));
        OUT.println("jwt_bundle td=" + b.getTrustDomain().getName() + " kids=" + kids);
      }
    }
  }

  private static void jwt(String audience) throws Exception {
    try (JwtSource src = jwtSource()) {
      JwtSvid svid = as == null ? src.fetchJwtSvid(audience) : src.fetchJwtSvid(as, audience);
      say("spiffe_id", svid.getSpiffeId().toString());
      say("token", svid.getToken());
      say("expiry", Long.toString(svid.getExpiry().getTime() / 1000));
    }
  }

  private static void validate(String token, String audience) throws Exception {
    boolean ok = true;
    try (JwtSource src = jwtSource()) {
      try {
        JwtSvid svid = JwtSvid.parseAndValidate(token, src, Set.of(audience));
        say("local", svid.getSpiffeId().toString());
      } catch (Exception e) {
        say("local_error", describe(e));
        ok = false;
      }
    }
    try (WorkloadApiClient client = DefaultWorkloadApiClient.newClient()) {
      JwtSvid svid = client.validateJwtSvid(token, audience);
      say("agent", svid.getSpiffeId().toString());
    } catch (Exception e) {
      say("agent_error", describe(e));
      ok = false;
    }
    if (!ok) {
      System.exit(1);
    }
  }

  private static void watch(int count, int seconds) throws Exception {
    Set<String> seen = new HashSet<>();
    CompletableFuture<Void> done = new CompletableFuture<>();
    try (WorkloadApiClient client = DefaultWorkloadApiClient.newClient()) {
      client.watchX509Context(
          new Watcher<X509Context>() {
            @Override
            public void onUpdate(X509Context update) {
              try {
                X509Svid svid = update.getDefaultSvid();
                if (as != null) {
                  svid = null;
                  for (X509Svid s : update.getX509Svids()) {
                    if (s.getSpiffeId().equals(as)) {
                      svid = s;
                    }
                  }
                  if (svid == null) {
                    throw new IllegalStateException("an update holds no X509-SVID for " + as);
                  }
                }
                X509SvidValidator.verifyChain(svid.getChain(), update.getX509BundleSet());
                X509Certificate leaf = svid.getLeaf();
                String serial = leaf.getSerialNumber().toString(16);
                OUT.println(
                    "update at="
                        + System.currentTimeMillis()
                        + " serial="
                        + serial
                        + " not_after="
                        + leaf.getNotAfter().getTime() / 1000
                        + " spiffe_id="
                        + svid.getSpiffeId());
                synchronized (seen) {
                  seen.add(serial);
                  if (seen.size() >= count) {
                    done.complete(null);
                  }
                }
              } catch (Exception e) {
                done.completeExceptionally(e);
              }
            }

            @Override
            public void onError(Throwable error) {
              // The library gives up on this stream; so does the watch.
              done.completeExceptionally(error);
            }
          });
      try {
        done.get(seconds, TimeUnit.SECONDS);
      } catch (TimeoutException e) {
        synchronized (seen) {
          fail("only " + seen.size() + " of " + count + " X509-SVIDs arrived within " + seconds + "s");
        }
      }
    }
  }

  private static SSLContext sslContext(DefaultX509Source src, SpiffeId accepted) throws Exception {
    return SpiffeSslContextFactory.getSslContext(
        SslContextOptions.builder().x509Source(src).acceptedSpiffeIdsSupplier(() -> Set.of(accepted)).build());
  }

  private static void serve(SpiffeId peer) throws Exception {
    DefaultX509Source src = x509Source();
    SpiffeId self = src.getX509Svid().getSpiffeId();
    SSLServerSocket listener =
        (SSLServerSocket)
            sslContext(src, peer)
                .getServerSocketFactory()
                .createServerSocket(0, 50, InetAddress.getLoopbackAddress());
    listener.setNeedClientAuth(true);
    say("listening", "127.0.0.1:" + listener.getLocalPort());
    say("self", self.toString());
    // The test ends the server by closing its standard input.
    Thread stdin =
        new Thread(
            () -> {
              try {
                System.in.transferTo(java.io.OutputStream.nullOutputStream());
              } catch (IOException e) {
                // Closed either way.
              }
              System.exit(0);
            });
    stdin.setDaemon(true);
    stdin.start();
    while (true) {
      Socket conn = listener.accept();
      new Thread(() -> answer((SSLSocket) conn, self)).start();
    }
  }

  /** Completes the handshake (where the client's certificate is checked) and greets the peer. */
  private static void answer(SSLSocket conn, SpiffeId self) {
    try (conn) {
      conn.setSoTimeout((int) CALL_TIMEOUT.toMillis());
      try {
        conn.startHandshake();
      } catch (IOException e) {
        say("refused", describe(e));
        return;
      }
      String peer = spiffeIdOf(conn.getSession().getPeerCertificates());
      say("accepted", peer);
      BufferedReader in =
          new BufferedReader(new InputStreamReader(conn.getInputStream(), StandardCharsets.UTF_8));
      String line = in.readLine();
      if (line == null) {
        return;
      }
      Writer out = new OutputStreamWriter(conn.getOutputStream(), StandardCharsets.UTF_8);
      out.write("hello " + peer + " from " + self + " (you said \"" + line.trim() + "\")\n");
      out.flush();
    } catch (Exception e) {
      say("refused", describe(e));
    }
  }

  private static void dial(String addr, SpiffeId server) throws Exception {
    int colon = addr.lastIndexOf(':');
    if (colon < 0) {
      fail("ADDR " + addr + " is not HOST:PORT");
    }
    String host = addr.substring(0, colon);
    int port = number(addr.substring(colon + 1), "PORT");
    try (DefaultX509Source src = x509Source();
        SSLSocket conn = (SSLSocket) sslContext(src, server).getSocketFactory().createSocket(host, port)) {
      conn.setSoTimeout((int) CALL_TIMEOUT.toMillis());
      conn.startHandshake();
      String peer = spiffeIdOf(conn.getSession().getPeerCertificates());
      Writer out = new OutputStreamWriter(conn.getOutputStream(), StandardCharsets.UTF_8);
      out.write("java-spiffe\n");
      out.flush();
      String reply =
          new BufferedReader(new InputStreamReader(conn.getInputStream(), StandardCharsets.UTF_8))
              .readLine();
      if (reply == null) {
        fail("no reply from " + addr + ": the connection was closed");
      }
      say("peer", peer);
      say("reply", reply.trim());
    }
  }

  private static void expectDenied() throws Exception {
    try (WorkloadApiClient client = DefaultWorkloadApiClient.newClient()) {
      client.fetchX509Context();
    } catch (Exception e) {
      // gRPC's StatusRuntimeException, as the library wraps it: "PERMISSION_DENIED: ...".
      for (Throwable t = e; t != null; t = t.getCause()) {
        String message = t.getMessage();
        if (t.getClass().getName().equals("io.grpc.StatusRuntimeException")
            && message != null
            && message.startsWith("PERMISSION_DENIED")) {
          say("denied", message);
          return;
        }
      }
      fail("expected PermissionDenied, got " + describe(e));
    }
    fail("expected PermissionDenied, got an X509 context");
  }

  /** The SPIFFE ID in the URI SAN of a peer's leaf certificate. */
  private static String spiffeIdOf(Certificate[] chain) throws Exception {
    Collection<List<?>> sans = ((X509Certificate) chain[0]).getSubjectAlternativeNames();
    if (sans != null) {
      for (List<?> san : sans) {
        // 6 is uniformResourceIdentifier.
        if (Integer.valueOf(6).equals(san.get(0)) && san.get(1).toString().startsWith("spiffe://")) {
          return san.get(1).toString();
        }
      }
    }
    throw new IllegalStateException("the peer's certificate holds no SPIFFE ID");
  }

  private static void writeCerts(Path file, Collection<X509Certificate> certs)
      throws IOException, CertificateEncodingException {
    StringBuilder pem = new StringBuilder();
    Base64.Encoder b64 = Base64.getMimeEncoder(64, "\n".getBytes(StandardCharsets.US_ASCII));
    for (X509Certificate c : certs) {
      pem.append("-----BEGIN CERTIFICATE-----\n")
          .append(b64.encodeToString(c.getEncoded()))
          .append("\n-----END CERTIFICATE-----\n");
    }
    Files.writeString(file, pem.toString());
  }

  /** The exception and its causes on one line. */
  private static String describe(Throwable e) {
    StringBuilder s = new StringBuilder();
    for (Throwable t = e; t != null; t = t.getCause()) {
      if (s.length() > 0) {
        s.append(": ");
      }
      s.append(t.getClass().getSimpleName());
      if (t.getMessage() != null) {
        s.append(" ").append(t.getMessage().replace('\n', ' '));
      }
    }
    return s.toString();
  }

  private static SpiffeId parseId(String s) {
    try {
      return SpiffeId.parse(s);
    } catch (IllegalArgumentException e) {
      fail("\"" + s + "\" is not a SPIFFE ID: " + e.getMessage());
      return null;
    }
  }

  private static int number(String s, String what) {
    try {
      return Integer.parseInt(s);
    } catch (NumberFormatException e) {
      fail(what + " \"" + s + "\" is not a number");
      return 0;
    }
  }

  private static void say(String key, String value) {
    OUT.println(key + "=" + value);
  }

  private static void fail(String message) {
    System.err.println("error: " + message);
    System.exit(1);
  }

  private static void usage() {
    System.err.println(
        "usage: SpiffeWorkload [--as SPIFFE_ID] x509 DIR | bundles DIR | jwt AUDIENCE"
            + " | validate TOKEN AUDIENCE | watch COUNT SECONDS | serve PEER_ID"
            + " | dial ADDR SERVER_ID | expect-denied");
    System.exit(2);
  }
}
