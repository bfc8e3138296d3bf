// Command spire-driver drives a SPIRE server (and reads a SPIRE agent) through
// SPIRE's published API (the spire-api-sdk module) for Tessera's benchmarks, so
// that the same scenario runs against both systems in one benchmark run:
//
//	spire-driver issuance  SVIDs per second through SVIDService.BatchNewX509SVID
//	spire-driver sync      simulated agents syncing as SPIRE's agent does
//	spire-driver agent-info  the cached X509-SVID count of a running spire-agent
//
// Every command prints one JSON object per line on standard output: events
// ("start"/"end" of each measured phase, so that the caller can read the
// server's CPU time and memory from /proc at those moments) and a final
// "result". Errors go to standard error, with exit status 1.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	debugv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/agent/debug/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

func main() {
	if len(os.Args) < 2 {
		fail("usage: spire-driver issuance|sync|agent-info [flags] (-h for the flags of each)")
	}
	var err error
	switch os.Args[1] {
	case "issuance":
		err = issuanceCmd(os.Args[2:])
	case "sync":
		err = syncCmd(os.Args[2:])
	case "agent-info":
		err = agentInfoCmd(os.Args[2:])
	default:
		err = fmt.Errorf("unknown command %q (issuance, sync or agent-info)", os.Args[1])
	}
	if err != nil {
		fail(err.Error())
	}
}

func fail(msg string) {
	fmt.Fprintln(os.Stderr, "spire-driver: error:", msg)
	os.Exit(1)
}

// emit prints one JSON line.
func emit(v map[string]any) {
	b, err := json.Marshal(v)
	if err != nil {
		fail("cannot encode output: " + err.Error())
	}
	os.Stdout.Write(append(b, '\n'))
}

// serverFlags are the flags every command that talks to the server takes.
type serverFlags struct {
	apiSocket   string
	address     string
	trustDomain string
}

func (s *serverFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&s.apiSocket, "api-socket", "", "the server API socket (socket_path of spire-server)")
	fs.StringVar(&s.address, "server", "", "the agent API address, HOST:PORT")
	fs.StringVar(&s.trustDomain, "trust-domain", "example.org", "the server's trust domain")
}

func (s *serverFlags) check() error {
	if s.apiSocket == "" || s.address == "" {
		return fmt.Errorf("-api-socket and -server are required")
	}
	return nil
}

func parseLevels(text string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(text, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("bad agent count %q in -levels", f)
		}
		if len(out) > 0 && n <= out[len(out)-1] {
			return nil, fmt.Errorf("-levels must increase: %q", text)
		}
		out = append(out, n)
	}
	return out, nil
}

func agentInfoCmd(args []string) error {
	fs := flag.NewFlagSet("agent-info", flag.ExitOnError)
	socket := fs.String("socket", "", "the agent's admin socket (admin_socket_path)")
	fs.Parse(args)
	if *socket == "" {
		return fmt.Errorf("-socket is required")
	}
	conn, err := grpc.NewClient("unix://"+*socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("admin socket %s: %w", *socket, err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	info, err := debugv1.NewDebugClient(conn).GetInfo(ctx, &debugv1.GetInfoRequest{})
	if err != nil {
		return fmt.Errorf("debug GetInfo on %s: %w", *socket, err)
	}
	emit(map[string]any{
		"event":             "result",
		"cached_x509_svids": info.GetCachedX509SvidsCount(),
		"svids":             info.GetSvidsCount(),
		"last_sync_success": info.GetLastSyncSuccess(),
		"uptime_secs":       info.GetUptime(),
	})
	return nil
}
