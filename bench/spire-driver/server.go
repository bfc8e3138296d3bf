package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"sort"
	"sync"
	"time"

	agentv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/agent/v1"
	bundlev1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/bundle/v1"
	entryv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/entry/v1"
	svidv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/svid/v1"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
)

// admin is the server API on its local socket, where the caller is an admin.
type admin struct {
	conn        *grpc.ClientConn
	trustDomain string
}

func dialAdmin(sf serverFlags) (*admin, error) {
	conn, err := grpc.NewClient("unix://"+sf.apiSocket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("server API socket %s: %w", sf.apiSocket, err)
	}
	return &admin{conn: conn, trustDomain: sf.trustDomain}, nil
}

// roots is the server's X.509 bundle, the bootstrap trust of the simulated agents.
func (a *admin) roots(ctx context.Context) (*x509.CertPool, error) {
	b, err := bundlev1.NewBundleClient(a.conn).GetBundle(ctx, &bundlev1.GetBundleRequest{})
	if err != nil {
		return nil, fmt.Errorf("GetBundle: %w", err)
	}
	pool := x509.NewCertPool()
	for _, c := range b.GetX509Authorities() {
		cert, err := x509.ParseCertificate(c.GetAsn1())
		if err != nil {
			return nil, fmt.Errorf("bundle certificate: %w", err)
		}
		pool.AddCert(cert)
	}
	return pool, nil
}

// tokens makes n join tokens valid for a day.
func (a *admin) tokens(ctx context.Context, n int) ([]string, error) {
	c := agentv1.NewAgentClient(a.conn)
	out := make([]string, 0, n)
	for range n {
		t, err := c.CreateJoinToken(ctx, &agentv1.CreateJoinTokenRequest{Ttl: 86400})
		if err != nil {
			return nil, fmt.Errorf("CreateJoinToken: %w", err)
		}
		out = append(out, t.GetValue())
	}
	return out, nil
}

// agentID is the SPIFFE ID that SPIRE gives the agent attested with token.
func (a *admin) agentID(token string) *types.SPIFFEID {
	return &types.SPIFFEID{TrustDomain: a.trustDomain, Path: "/spire/agent/join_token/" + token}
}

// entry is a workload entry under parent with one unix selector.
func (a *admin) entry(path string, parent *types.SPIFFEID, uid int) *types.Entry {
	return &types.Entry{
		SpiffeId:  &types.SPIFFEID{TrustDomain: a.trustDomain, Path: path},
		ParentId:  parent,
		Selectors: []*types.Selector{{Type: "unix", Value: fmt.Sprintf("uid:%d", uid)}},
	}
}

// createEntries creates entries in batches; returns their IDs in order.
func (a *admin) createEntries(ctx context.Context, entries []*types.Entry) ([]string, error) {
	c := entryv1.NewEntryClient(a.conn)
	ids := make([]string, 0, len(entries))
	for len(entries) > 0 {
		n := min(len(entries), 500)
		resp, err := c.BatchCreateEntry(ctx, &entryv1.BatchCreateEntryRequest{Entries: entries[:n]})
		if err != nil {
			return nil, fmt.Errorf("BatchCreateEntry: %w", err)
		}
		for _, r := range resp.GetResults() {
			if r.GetStatus().GetCode() != 0 {
				return nil, fmt.Errorf("entry refused: %s", r.GetStatus().GetMessage())
			}
			ids = append(ids, r.GetEntry().GetId())
		}
		entries = entries[n:]
	}
	return ids, nil
}

// simAgent is an attested agent identity with its own mTLS connection to the
// server, and the entries it holds between syncs (ID -> revision).
type simAgent struct {
	conn    *grpc.ClientConn
	entries map[string]int64
}

// tlsTo trusts a server presenting spiffe://<td>/spire/server under roots.
func tlsTo(roots *x509.CertPool, trustDomain string) *tls.Config {
	want := "spiffe://" + trustDomain + "/spire/server"
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		// The server's SVID has no DNS name: the chain and the SPIFFE ID are
		// checked below instead of a host name.
		InsecureSkipVerify: true,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			if len(raw) == 0 {
				return fmt.Errorf("the server sent no certificate")
			}
			certs := make([]*x509.Certificate, 0, len(raw))
			for _, r := range raw {
				c, err := x509.ParseCertificate(r)
				if err != nil {
					return err
				}
				certs = append(certs, c)
			}
			inter := x509.NewCertPool()
			for _, c := range certs[1:] {
				inter.AddCert(c)
			}
			_, err := certs[0].Verify(x509.VerifyOptions{
				Roots:         roots,
				Intermediates: inter,
				KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
			})
			if err != nil {
				return fmt.Errorf("server certificate: %w", err)
			}
			for _, u := range certs[0].URIs {
				if u.String() == want {
					return nil
				}
			}
			return fmt.Errorf("the server is not %s", want)
		},
	}
}

// newCSR is a CSR for a fresh P-256 key (SPIRE takes only the key from it).
func newCSR() ([]byte, *ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	return csr, key, err
}

func dialTLS(address string, cfg *tls.Config) (*grpc.ClientConn, error) {
	return grpc.NewClient("passthrough:///"+address, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
}

// attest runs the join_token attestation (AgentService.AttestAgent) and opens
// the agent's own mTLS connection with the SVID it got.
func attest(ctx context.Context, address, trustDomain string, roots *x509.CertPool, token string) (*simAgent, error) {
	csr, key, err := newCSR()
	if err != nil {
		return nil, err
	}
	conn, err := dialTLS(address, tlsTo(roots, trustDomain))
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	stream, err := agentv1.NewAgentClient(conn).AttestAgent(ctx)
	if err != nil {
		return nil, fmt.Errorf("AttestAgent: %w", err)
	}
	err = stream.Send(&agentv1.AttestAgentRequest{Step: &agentv1.AttestAgentRequest_Params_{
		Params: &agentv1.AttestAgentRequest_Params{
			Data:   &types.AttestationData{Type: "join_token", Payload: []byte(token)},
			Params: &agentv1.AgentX509SVIDParams{Csr: csr},
		},
	}})
	if err != nil {
		return nil, fmt.Errorf("AttestAgent send: %w", err)
	}
	resp, err := stream.Recv()
	if err != nil {
		return nil, fmt.Errorf("AttestAgent: %w", err)
	}
	chain := resp.GetResult().GetSvid().GetCertChain()
	if len(chain) == 0 {
		return nil, fmt.Errorf("AttestAgent answered no SVID")
	}
	_ = stream.CloseSend()
	cfg := tlsTo(roots, trustDomain)
	cfg.Certificates = []tls.Certificate{{Certificate: chain, PrivateKey: key}}
	own, err := dialTLS(address, cfg)
	if err != nil {
		return nil, err
	}
	own.Connect()
	return &simAgent{conn: own, entries: map[string]int64{}}, nil
}

// attestMany attests one agent per token, parallel at a time, in token order.
func attestMany(ctx context.Context, sf serverFlags, roots *x509.CertPool, tokens []string, parallel int) ([]*simAgent, error) {
	out := make([]*simAgent, len(tokens))
	errs := make([]error, len(tokens))
	next := make(chan int)
	var wg sync.WaitGroup
	for range parallel {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				out[i], errs[i] = attest(ctx, sf.address, sf.trustDomain, roots, tokens[i])
			}
		}()
	}
	for i := range tokens {
		next <- i
	}
	close(next)
	wg.Wait()
	for _, e := range errs {
		if e != nil {
			return nil, e
		}
	}
	return out, nil
}

// The entry fields an agent asks for when it syncs.
var syncMask = &types.EntryMask{
	SpiffeId: true, Selectors: true, FederatesWith: true, Admin: true, Downstream: true,
	RevisionNumber: true, StoreSvid: true, Hint: true, CreatedAt: true,
}

// sync is one sync on SPIRE's agent path: EntryService.SyncAuthorizedEntries
// (the full list when the server sends it, otherwise the revisions first and
// then the entries that are new or changed, a page at a time), then
// BundleService.GetBundle. Returns how many entries the agent holds.
func (a *simAgent) sync(ctx context.Context) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	stream, err := entryv1.NewEntryClient(a.conn).SyncAuthorizedEntries(ctx)
	if err != nil {
		return 0, fmt.Errorf("SyncAuthorizedEntries: %w", err)
	}
	if err := stream.Send(&entryv1.SyncAuthorizedEntriesRequest{OutputMask: syncMask}); err != nil {
		return 0, fmt.Errorf("SyncAuthorizedEntries send: %w", err)
	}
	resp, err := stream.Recv()
	if err != nil {
		return 0, fmt.Errorf("SyncAuthorizedEntries: %w", err)
	}
	seen := map[string]bool{}
	keep := func(es []*types.Entry) {
		for _, e := range es {
			seen[e.GetId()] = true
			a.entries[e.GetId()] = e.GetRevisionNumber()
		}
	}
	if len(resp.GetEntryRevisions()) == 0 {
		keep(resp.GetEntries())
		for resp.GetMore() {
			if resp, err = stream.Recv(); err != nil {
				return 0, fmt.Errorf("SyncAuthorizedEntries page: %w", err)
			}
			keep(resp.GetEntries())
		}
	} else {
		page := len(resp.GetEntryRevisions())
		var want []string
		for {
			for _, r := range resp.GetEntryRevisions() {
				seen[r.GetId()] = true
				if rev, ok := a.entries[r.GetId()]; !ok || rev != r.GetRevisionNumber() {
					want = append(want, r.GetId())
				}
			}
			if !resp.GetMore() {
				break
			}
			if resp, err = stream.Recv(); err != nil {
				return 0, fmt.Errorf("SyncAuthorizedEntries revisions: %w", err)
			}
		}
		sort.Strings(want)
		for len(want) > 0 {
			n := min(len(want), page)
			if err := stream.Send(&entryv1.SyncAuthorizedEntriesRequest{Ids: want[:n]}); err != nil {
				return 0, fmt.Errorf("SyncAuthorizedEntries send: %w", err)
			}
			want = want[n:]
			for {
				if resp, err = stream.Recv(); err != nil {
					return 0, fmt.Errorf("SyncAuthorizedEntries entries: %w", err)
				}
				keep(resp.GetEntries())
				if !resp.GetMore() {
					break
				}
			}
		}
	}
	_ = stream.CloseSend()
	for id := range a.entries {
		if !seen[id] {
			delete(a.entries, id)
		}
	}
	if _, err := bundlev1.NewBundleClient(a.conn).GetBundle(ctx, &bundlev1.GetBundleRequest{}); err != nil {
		return 0, fmt.Errorf("GetBundle: %w", err)
	}
	return len(a.entries), nil
}

// issue asks for one X509-SVID per parameter (SVIDService.BatchNewX509SVID);
// returns how many were signed, failing on the first refused one.
func (a *simAgent) issue(ctx context.Context, params []*svidv1.NewX509SVIDParams) (int, error) {
	resp, err := svidv1.NewSVIDClient(a.conn).BatchNewX509SVID(ctx, &svidv1.BatchNewX509SVIDRequest{Params: params})
	if err != nil {
		return 0, fmt.Errorf("BatchNewX509SVID: %w", err)
	}
	n := 0
	for _, r := range resp.GetResults() {
		if r.GetStatus().GetCode() != 0 || len(r.GetSvid().GetCertChain()) == 0 {
			return n, fmt.Errorf("BatchNewX509SVID refused an SVID: %s", r.GetStatus().GetMessage())
		}
		n++
	}
	return n, nil
}
