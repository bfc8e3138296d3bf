// A Go workload talking to the SPIFFE Workload API with grpc-go, the gRPC stack
// go-spiffe is built on: a `unix:` target, an insecure (local) transport, and the
// security header on every call. The stubs are generated from Tessera's own
// workload.proto by scripts/go-env.sh.
//
// Usage (the socket comes from SPIFFE_ENDPOINT_SOCKET):
//
//	workloadclient x509 OUT_DIR          write chain.pem and bundle.pem; print
//	                                     spiffe_id=..., chain_len=..., key_len=...
//	workloadclient jwt AUDIENCE          print the JWT-SVID's token
//	workloadclient validate TOKEN AUDIENCE
//	                                     print spiffe_id=... from ValidateJWTSVID
//	workloadclient expect-denied         exit 0 only on PermissionDenied
//
// Any other failure prints the gRPC status and exits 1.
package main

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	pb "tessera.test/workloadpb"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	endpoint := os.Getenv("SPIFFE_ENDPOINT_SOCKET")
	if endpoint == "" {
		fail("SPIFFE_ENDPOINT_SOCKET is not set")
	}
	if !strings.HasPrefix(endpoint, "unix:") {
		fail("SPIFFE_ENDPOINT_SOCKET must be a unix: address, not %q", endpoint)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	conn, err := grpc.DialContext(ctx, endpoint, grpc.WithInsecure(), grpc.WithBlock())
	if err != nil {
		fail("cannot connect to %s: %v", endpoint, err)
	}
	defer conn.Close()
	client := pb.NewSpiffeWorkloadAPIClient(conn)
	ctx = metadata.AppendToOutgoingContext(ctx, "workload.spiffe.io", "true")

	switch os.Args[1] {
	case "x509":
		x509Svid(ctx, client, arg(2))
	case "jwt":
		resp, err := client.FetchJWTSVID(ctx, &pb.JWTSVIDRequest{Audience: []string{arg(2)}})
		check(err)
		if len(resp.Svids) == 0 {
			fail("the JWTSVIDResponse holds no SVID")
		}
		fmt.Println(resp.Svids[0].Svid)
	case "validate":
		resp, err := client.ValidateJWTSVID(ctx, &pb.ValidateJWTSVIDRequest{Svid: arg(2), Audience: arg(3)})
		check(err)
		fmt.Printf("spiffe_id=%s\n", resp.SpiffeId)
	case "expect-denied":
		stream, err := client.FetchX509SVID(ctx, &pb.X509SVIDRequest{})
		if err == nil {
			_, err = stream.Recv()
		}
		if status.Code(err) != codes.PermissionDenied {
			fail("expected PermissionDenied, got %v", err)
		}
		fmt.Printf("denied: %s\n", status.Convert(err).Message())
	default:
		usage()
	}
}

func x509Svid(ctx context.Context, client pb.SpiffeWorkloadAPIClient, outDir string) {
	stream, err := client.FetchX509SVID(ctx, &pb.X509SVIDRequest{})
	check(err)
	first, err := stream.Recv()
	check(err)
	if len(first.Svids) == 0 {
		fail("the first X509SVIDResponse holds no SVID")
	}
	svid := first.Svids[0]
	chain, err := x509.ParseCertificates(svid.X509Svid)
	if err != nil {
		fail("x509_svid is not DER certificates: %v", err)
	}
	bundle, err := x509.ParseCertificates(svid.Bundle)
	if err != nil {
		fail("bundle is not DER certificates: %v", err)
	}
	if _, err := x509.ParsePKCS8PrivateKey(svid.X509SvidKey); err != nil {
		fail("x509_svid_key is not a PKCS#8 key: %v", err)
	}
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		fail("%v", err)
	}
	writePem(filepath.Join(outDir, "chain.pem"), chain)
	writePem(filepath.Join(outDir, "bundle.pem"), bundle)
	fmt.Printf("spiffe_id=%s\n", svid.SpiffeId)
	fmt.Printf("chain_len=%d\n", len(chain))
	fmt.Printf("key_len=%d\n", len(svid.X509SvidKey))
	fmt.Printf("leaf_uri=%s\n", chain[0].URIs[0])
}

func writePem(path string, certs []*x509.Certificate) {
	var b strings.Builder
	for _, c := range certs {
		if err := pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw}); err != nil {
			fail("%v", err)
		}
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		fail("%v", err)
	}
}

func check(err error) {
	if err != nil {
		fail("Workload API call failed: code=%s desc=%s", status.Code(err), status.Convert(err).Message())
	}
}

func arg(i int) string {
	if len(os.Args) <= i {
		usage()
	}
	return os.Args[i]
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: workloadclient x509 DIR | jwt AUDIENCE | validate TOKEN AUDIENCE | expect-denied")
	os.Exit(2)
}

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, format+"\n", args...)
	os.Exit(1)
}
