module tessera.test/spire-driver

go 1.24.0

// The versions SPIRE v1.13.3's own go.mod names, so that the driver speaks the
// API of the server it drives.
require (
	github.com/spiffe/spire-api-sdk v1.2.5-0.20250109200630-101d5e7de758
	google.golang.org/grpc v1.76.0
	google.golang.org/protobuf v1.36.10 // indirect
)

require (
	golang.org/x/net v0.46.0 // indirect
	golang.org/x/sys v0.37.0 // indirect
	golang.org/x/text v0.30.0 // indirect
	google.golang.org/genproto/googleapis/rpc v0.0.0-20251002232023-7c0ddcbb5797 // indirect
)
