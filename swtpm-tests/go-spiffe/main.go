// A workload built on go-spiffe v2, the Workload API library Go services use:
// Tessera's end-to-end tests run it against Tessera's agent (and SPIRE's) to show
// that what the agent serves is what go-spiffe accepts, through the library's own
// sources, validators and TLS helpers. The agent's socket comes from
// SPIFFE_ENDPOINT_SOCKET, read by go-spiffe itself.
//
// Usage: go-spiffe-workload [--as SPIFFE_ID] COMMAND ARGS...
//
//	--as ID             use the X509-SVID (and ask for the JWT-SVID) with this ID
//	                    when the workload holds several
//	x509 DIR            X509Source: write DIR/chain.pem and DIR/bundle.pem; print
//	                    spiffe_id, chain_len, bundle_len, verified, not_after, hint
//	bundles DIR         FetchX509Bundles and FetchJWTBundles: write
//	                    DIR/<td>.x509.pem and DIR/<td>.jwks.json; print an
//	                    `x509_bundle td=.. authorities=N` and a
//	                    `jwt_bundle td=.. kids=K1,K2` line per trust domain
//	jwt AUDIENCE        JWTSource: print spiffe_id, token, expiry
//	validate TOKEN AUDIENCE
//	                    validate locally (JWTSource's bundles) and through the
//	                    agent (ValidateJWTSVID); print local= and agent=, or
//	                    local_error= / agent_error=; exit 0 only if both pass
//	watch COUNT SECONDS WatchX509Context until COUNT different X509-SVIDs have
//	                    arrived, each verified against the bundles sent with it;
//	                    one `update` line each; exit 1 if SECONDS pass first
//	serve PEER_ID       spiffetls mTLS listener on 127.0.0.1 that accepts only
//	                    PEER_ID; print listening=ADDR and self=ID, then accepted=ID
//	                    or refused=ERROR per connection; exit when stdin closes
//	dial ADDR SERVER_ID spiffetls mTLS dial that accepts only SERVER_ID; print
//	                    peer=ID and reply=TEXT
//	expect-denied       exit 0 only if the agent answers PermissionDenied
//
// Output is `key=value` lines (an `update` line holds several space-separated
// pairs). Failures go to standard error as `error: ...` with exit status 1.
package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// How long one-shot commands wait for the agent.
const callTimeout = 30 * time.Second

var as spiffeid.ID

func main() {
	flag.Usage = usage
	asFlag := flag.String("as", "", "the SPIFFE ID to act as when the workload holds several")
	flag.Parse()
	if *asFlag != "" {
		id, err := spiffeid.FromString(*asFlag)
		check(err, "--as %q is not a SPIFFE ID", *asFlag)
		as = id
	}
	args := flag.Args()
	if len(args) == 0 {
		usage()
	}
	cmd, args := args[0], args[1:]
	switch {
	case cmd == "x509" && len(args) == 1:
		x509Cmd(args[0])
	case cmd == "bundles" && len(args) == 1:
		bundlesCmd(args[0])
	case cmd == "jwt" && len(args) == 1:
		jwtCmd(args[0])
	case cmd == "validate" && len(args) == 2:
		validateCmd(args[0], args[1])
	case cmd == "watch" && len(args) == 2:
		count, err := strconv.Atoi(args[0])
		check(err, "COUNT %q is not a number", args[0])
		secs, err := strconv.Atoi(args[1])
		check(err, "SECONDS %q is not a number", args[1])
		watchCmd(count, time.Duration(secs)*time.Second)
	case cmd == "serve" && len(args) == 1:
		serveCmd(parseID(args[0]))
	case cmd == "dial" && len(args) == 2:
		dialCmd(args[0], parseID(args[1]))
	case cmd == "expect-denied" && len(args) == 0:
		expectDeniedCmd()
	default:
		usage()
	}
}

// x509Source opens an X509Source that picks the --as SVID when one is given.
func x509Source(ctx context.Context) *workloadapi.X509Source {
	var opts []workloadapi.X509SourceOption
	if !as.IsZero() {
		opts = append(opts, workloadapi.WithDefaultX509SVIDPicker(func(svids []*x509svid.SVID) *x509svid.SVID {
			for _, s := range svids {
				if s.ID == as {
					return s
				}
			}
			fail("the agent sent no X509-SVID for %s", as)
			return nil
		}))
	}
	src, err := workloadapi.NewX509Source(ctx, opts...)
	check(err, "cannot open an X509Source")
	return src
}

func x509Cmd(dir string) {
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	src := x509Source(ctx)
	defer src.Close()
	svid, err := src.GetX509SVID()
	check(err, "no X509-SVID")
	bundle, err := src.GetX509BundleForTrustDomain(svid.ID.TrustDomain())
	check(err, "no bundle for %s", svid.ID.TrustDomain())
	// The library's own path validation, against the bundles the agent sent.
	verified, _, err := x509svid.Verify(svid.Certificates, src)
	check(err, "the X509-SVID does not verify against its trust domain's bundle")
	check(os.MkdirAll(dir, 0o755), "cannot create %s", dir)
	writeCerts(filepath.Join(dir, "chain.pem"), svid.Certificates)
	writeCerts(filepath.Join(dir, "bundle.pem"), bundle.X509Authorities())
	say("spiffe_id", svid.ID.String())
	say("chain_len", strconv.Itoa(len(svid.Certificates)))
	say("bundle_len", strconv.Itoa(len(bundle.X509Authorities())))
	say("verified", verified.String())
	say("not_after", strconv.FormatInt(svid.Certificates[0].NotAfter.Unix(), 10))
	say("hint", svid.Hint)
}

func bundlesCmd(dir string) {
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	check(os.MkdirAll(dir, 0o755), "cannot create %s", dir)
	x509Bundles, err := workloadapi.FetchX509Bundles(ctx)
	check(err, "FetchX509Bundles failed")
	for _, b := range x509Bundles.Bundles() {
		td := b.TrustDomain().Name()
		writeCerts(filepath.Join(dir, td+".x509.pem"), b.X509Authorities())
		fmt.Printf("x509_bundle td=%s authorities=%d\n", td, len(b.X509Authorities()))
	}
	jwtBundles, err := workloadapi.FetchJWTBundles(ctx)
	check(err, "FetchJWTBundles failed")
	for _, b := range jwtBundles.Bundles() {
		td := b.TrustDomain().Name()
		doc, err := b.Marshal()
		check(err, "cannot marshal the JWT bundle of %s", td)
		write(filepath.Join(dir, td+".jwks.json"), doc)
		kids := make([]string, 0, len(b.JWTAuthorities()))
		for kid := range b.JWTAuthorities() {
			kids = append(kids, kid)
		}
		sort.Strings(kids)
		fmt.Printf("jwt_bundle td=%s kids=%s\n", td, strings.Join(kids, ","))
	}
}

func jwtCmd(audience string) {
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	src, err := workloadapi.NewJWTSource(ctx)
	check(err, "cannot open a JWTSource")
	defer src.Close()
	svid, err := src.FetchJWTSVID(ctx, jwtsvid.Params{Audience: audience, Subject: as})
	check(err, "FetchJWTSVID failed")
	say("spiffe_id", svid.ID.String())
	say("token", svid.Marshal())
	say("expiry", strconv.FormatInt(svid.Expiry.Unix(), 10))
}

func validateCmd(token, audience string) {
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	src, err := workloadapi.NewJWTSource(ctx)
	check(err, "cannot open a JWTSource")
	defer src.Close()
	ok := true
	if svid, err := jwtsvid.ParseAndValidate(token, src, []string{audience}); err != nil {
		say("local_error", err.Error())
		ok = false
	} else {
		say("local", svid.ID.String())
	}
	if svid, err := workloadapi.ValidateJWTSVID(ctx, token, audience); err != nil {
		say("agent_error", err.Error())
		ok = false
	} else {
		say("agent", svid.ID.String())
	}
	if !ok {
		os.Exit(1)
	}
}

// watcher records each X509 context the agent pushes.
type watcher struct {
	seen  map[string]bool
	want  int
	done  chan struct{}
	fatal chan error
}

func (w *watcher) OnX509ContextUpdate(c *workloadapi.X509Context) {
	svid := c.DefaultSVID()
	if !as.IsZero() {
		svid = nil
		for _, s := range c.SVIDs {
			if s.ID == as {
				svid = s
			}
		}
		if svid == nil {
			w.fatal <- fmt.Errorf("an update holds no X509-SVID for %s", as)
			return
		}
	}
	if _, _, err := x509svid.Verify(svid.Certificates, c.Bundles); err != nil {
		w.fatal <- fmt.Errorf("an update's X509-SVID does not verify against the bundles sent with it: %w", err)
		return
	}
	leaf := svid.Certificates[0]
	serial := leaf.SerialNumber.Text(16)
	fmt.Printf("update at=%d serial=%s not_after=%d spiffe_id=%s\n",
		time.Now().UnixMilli(), serial, leaf.NotAfter.Unix(), svid.ID)
	w.seen[serial] = true
	if len(w.seen) == w.want {
		close(w.done)
	}
}

func (w *watcher) OnX509ContextWatchError(err error) {
	// The library reconnects by itself; say so and keep watching.
	fmt.Fprintf(os.Stderr, "watch error (the library retries): %v\n", err)
}

func watchCmd(count int, limit time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	w := &watcher{seen: map[string]bool{}, want: count, done: make(chan struct{}), fatal: make(chan error, 1)}
	client, err := workloadapi.New(ctx)
	check(err, "cannot create a Workload API client")
	defer client.Close()
	go func() {
		err := client.WatchX509Context(ctx, w)
		if err != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) {
			w.fatal <- err
		}
	}()
	select {
	case <-w.done:
	case err := <-w.fatal:
		fail("%v", err)
	case <-ctx.Done():
		fail("only %d of %d X509-SVIDs arrived within %s", len(w.seen), count, limit)
	}
}

func serveCmd(peer spiffeid.ID) {
	ctx := context.Background()
	src := x509Source(ctx)
	defer src.Close()
	self, err := src.GetX509SVID()
	check(err, "no X509-SVID")
	listener, err := spiffetls.ListenWithMode(ctx, "tcp", "127.0.0.1:0",
		spiffetls.MTLSServerWithSource(tlsconfig.AuthorizeID(peer), src))
	check(err, "cannot listen")
	say("listening", listener.Addr().String())
	say("self", self.ID.String())
	// The test ends the server by closing its standard input.
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		os.Exit(0)
	}()
	for {
		conn, err := listener.Accept()
		check(err, "accept failed")
		go answer(conn, self.ID)
	}
}

// answer completes the handshake (where the client's certificate is checked) and
// greets the authorised peer.
func answer(conn net.Conn, self spiffeid.ID) {
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(callTimeout))
	tlsConn, ok := conn.(interface {
		HandshakeContext(context.Context) error
		ConnectionState() tls.ConnectionState
	})
	if !ok {
		say("refused", "the listener returned a connection that is not TLS")
		return
	}
	if err := tlsConn.HandshakeContext(context.Background()); err != nil {
		say("refused", err.Error())
		return
	}
	peer, err := spiffetls.PeerIDFromConnectionState(tlsConn.ConnectionState())
	if err != nil {
		say("refused", err.Error())
		return
	}
	say("accepted", peer.String())
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return
	}
	_, _ = fmt.Fprintf(conn, "hello %s from %s (you said %q)\n", peer, self, strings.TrimSpace(line))
}

func dialCmd(addr string, server spiffeid.ID) {
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	src := x509Source(ctx)
	defer src.Close()
	conn, err := spiffetls.DialWithMode(ctx, "tcp", addr,
		spiffetls.MTLSClientWithSource(tlsconfig.AuthorizeID(server), src))
	check(err, "mTLS dial to %s failed", addr)
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(callTimeout))
	peer, err := spiffetls.PeerIDFromConn(conn)
	check(err, "no peer ID")
	_, err = fmt.Fprintf(conn, "go-spiffe\n")
	check(err, "cannot write to %s", addr)
	// With TLS 1.3 the server checks the client's certificate after the client's
	// handshake returns, so a refusal shows up here.
	reply, err := bufio.NewReader(conn).ReadString('\n')
	check(err, "no reply from %s", addr)
	say("peer", peer.String())
	say("reply", strings.TrimSpace(reply))
}

func expectDeniedCmd() {
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	client, err := workloadapi.New(ctx)
	check(err, "cannot create a Workload API client")
	defer client.Close()
	_, err = client.FetchX509SVID(ctx)
	if status.Code(err) != codes.PermissionDenied {
		fail("expected PermissionDenied, got %v", err)
	}
	say("denied", status.Convert(err).Message())
}

func parseID(s string) spiffeid.ID {
	id, err := spiffeid.FromString(s)
	check(err, "%q is not a SPIFFE ID", s)
	return id
}

func writeCerts(path string, certs []*x509.Certificate) {
	var b strings.Builder
	for _, c := range certs {
		check(pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw}), "cannot encode PEM")
	}
	write(path, []byte(b.String()))
}

func write(path string, data []byte) {
	check(os.WriteFile(path, data, 0o644), "cannot write %s", path)
}

func say(key, value string) {
	fmt.Printf("%s=%s\n", key, value)
}

func check(err error, format string, args ...any) {
	if err != nil {
		fail("%s: %v", fmt.Sprintf(format, args...), err)
	}
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "error: "+format+"\n", args...)
	os.Exit(1)
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: go-spiffe-workload [--as SPIFFE_ID] x509 DIR | bundles DIR | jwt AUDIENCE | validate TOKEN AUDIENCE | watch COUNT SECONDS | serve PEER_ID | dial ADDR SERVER_ID | expect-denied")
	os.Exit(2)
}
