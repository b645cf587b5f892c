// Command attestd-agent-client speaks kata's agent protocol (ttrpc) to the pod
// VM's agent-protocol-forwarder, over TCP or TLS, as cloud-api-adaptor does:
// with kata's own generated Go types, the ones cloud-api-adaptor links.
//
// It reads one call per line on standard input,
//
//	{"service": "grpc.AgentService", "method": "CreateSandbox", "request": {...}}
//
// the request in protobuf's JSON form (field names as in agent.proto), and
// writes one line per call: {"response": {...}} or {"error": "..."}. Every
// call goes over the one connection it opened, as the adaptor's does.
//
// It has no go.mod: scripts/peers-build.sh builds it inside cloud-api-adaptor's
// module, whose go.mod names the kata runtime module (the agent protocol's
// package), at the commit pinned in scripts/peers.pins.
package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"os"
	"time"

	"github.com/containerd/ttrpc"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	// Registers agent.proto's services and messages.
	_ "github.com/kata-containers/kata-containers/src/runtime/virtcontainers/pkg/agent/protocols/grpc"
)

// maxLine bounds one request line (an OCI spec is a few KiB).
const maxLine = 4 << 20

type call struct {
	Service string          `json:"service"`
	Method  string          `json:"method"`
	Request json.RawMessage `json:"request"`
	// Seconds; 0 means 60.
	Timeout int `json:"timeout"`
}

type answer struct {
	Response json.RawMessage `json:"response,omitempty"`
	Error    string          `json:"error,omitempty"`
}

func dial(addr, ca, cert, key string) (net.Conn, error) {
	if cert == "" {
		return net.DialTimeout("tcp", addr, 10*time.Second)
	}
	pair, err := tls.LoadX509KeyPair(cert, key)
	if err != nil {
		return nil, fmt.Errorf("client certificate: %w", err)
	}
	pem, err := os.ReadFile(ca)
	if err != nil {
		return nil, fmt.Errorf("server CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("server CA %s: no certificate", ca)
	}
	host, _, _ := net.SplitHostPort(addr)
	d := &net.Dialer{Timeout: 10 * time.Second}
	return tls.DialWithDialer(d, "tcp", addr, &tls.Config{
		Certificates: []tls.Certificate{pair},
		RootCAs:      pool,
		ServerName:   host,
		MinVersion:   tls.VersionTLS12,
	})
}

func do(client *ttrpc.Client, c call) (json.RawMessage, error) {
	d, err := protoregistry.GlobalFiles.FindDescriptorByName(protoreflect.FullName(c.Service))
	if err != nil {
		return nil, fmt.Errorf("service %s: %w", c.Service, err)
	}
	svc, ok := d.(protoreflect.ServiceDescriptor)
	if !ok {
		return nil, fmt.Errorf("%s is not a service", c.Service)
	}
	m := svc.Methods().ByName(protoreflect.Name(c.Method))
	if m == nil {
		return nil, fmt.Errorf("%s has no method %s", c.Service, c.Method)
	}
	in, err := protoregistry.GlobalTypes.FindMessageByName(m.Input().FullName())
	if err != nil {
		return nil, err
	}
	out, err := protoregistry.GlobalTypes.FindMessageByName(m.Output().FullName())
	if err != nil {
		return nil, err
	}
	req, resp := in.New().Interface(), out.New().Interface()
	if len(c.Request) > 0 {
		if err := protojson.Unmarshal(c.Request, req); err != nil {
			return nil, fmt.Errorf("request for %s: %w", c.Method, err)
		}
	}
	timeout := time.Duration(c.Timeout) * time.Second
	if timeout == 0 {
		timeout = 60 * time.Second
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := client.Call(ctx, c.Service, c.Method, req, resp); err != nil {
		return nil, err
	}
	return protojson.MarshalOptions{UseProtoNames: true}.Marshal(resp.(proto.Message))
}

func main() {
	addr := flag.String("addr", "127.0.0.1:15150", "agent-protocol-forwarder's address")
	ca := flag.String("ca", "", "CA of the forwarder's certificate (with -cert: TLS)")
	cert := flag.String("cert", "", "client certificate (PEM); none: plain TCP, for APF's -disable-tls")
	key := flag.String("key", "", "client key (PEM)")
	flag.Parse()

	conn, err := dial(*addr, *ca, *cert, *key)
	if err != nil {
		fmt.Fprintf(os.Stderr, "attestd-agent-client: connect %s: %v\n", *addr, err)
		os.Exit(1)
	}
	client := ttrpc.NewClient(conn)
	defer client.Close()

	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 64<<10), maxLine)
	enc := json.NewEncoder(os.Stdout)
	for in.Scan() {
		var c call
		var a answer
		if err := json.Unmarshal(in.Bytes(), &c); err != nil {
			a.Error = fmt.Sprintf("call: %v", err)
		} else if r, err := do(client, c); err != nil {
			a.Error = err.Error()
		} else {
			a.Response = r
		}
		if err := enc.Encode(a); err != nil {
			os.Exit(1)
		}
	}
	if err := in.Err(); err != nil {
		fmt.Fprintf(os.Stderr, "attestd-agent-client: stdin: %v\n", err)
		os.Exit(1)
	}
}
