// A key-provider client shaped as Go's ocicrypt (skopeo, podman, containerd):
// ocicrypt's request and answer structs, with []byte fields, encoded and decoded
// by encoding/json, sent over gRPC (grpc-go) to keyprovider.KeyProviderService.
// Test-only: tests/tests/keyprovider.rs builds it with Debian's Go toolchain and
// packaged grpc-go (GOPATH mode, nothing fetched).
//
//	keyprovider roundtrip ADDR PROVIDER KID   wrap fresh layer options, unwrap them
//	keyprovider unwrap ADDR ANNOTATION_B64    unwrap one annotation
//
// Prints one JSON object; exit 0 on success, 1 when the key provider answered an
// error (its gRPC code and message are printed), 2 on a local failure.
package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
)

// The structs of ocicrypt's keywrap/keyprovider and config packages, as declared
// there (field names and JSON tags); []byte is what decides the JSON dialect.
type DecryptConfig struct {
	Parameters map[string][][]byte
}

type EncryptConfig struct {
	Parameters    map[string][][]byte
	DecryptConfig DecryptConfig
}

type KeyProviderKeyWrapProtocolInput struct {
	Operation       string          `json:"op,omitempty"`
	KeyWrapParams   KeyWrapParams   `json:"keywrapparams,omitempty"`
	KeyUnwrapParams KeyUnwrapParams `json:"keyunwrapparams,omitempty"`
}

type KeyWrapParams struct {
	Ec       *EncryptConfig `json:"ec"`
	Optsdata []byte         `json:"optsdata"`
}

type KeyUnwrapParams struct {
	Dc         *DecryptConfig `json:"dc"`
	Annotation []byte         `json:"annotation"`
}

type KeyProviderKeyWrapProtocolOutput struct {
	KeyWrapResults   KeyWrapResults   `json:"keywrapresults,omitempty"`
	KeyUnwrapResults KeyUnwrapResults `json:"keyunwrapresults,omitempty"`
}

type KeyWrapResults struct {
	Annotation []byte `json:"annotation"`
}

type KeyUnwrapResults struct {
	OptsData []byte `json:"optsdata"`
}

// ocicrypt's PrivateLayerBlockCipherOptions: what optsdata carries.
type PrivateLayerBlockCipherOptions struct {
	SymmetricKey  []byte            `json:"symkey"`
	Digest        string            `json:"digest"`
	CipherOptions map[string][]byte `json:"cipheroptions"`
}

// message is KeyProviderKeyWrapProtocolInput/Output on the wire: one bytes field
// (number 1). Encoded by hand: no protoc plugin is needed for one field.
type message struct{ b []byte }

type codec struct{}

func (codec) Name() string { return "proto" }

func (codec) Marshal(v interface{}) ([]byte, error) {
	m := v.(*message)
	if len(m.b) == 0 {
		return nil, nil
	}
	out := []byte{0x0a}
	out = appendVarint(out, uint64(len(m.b)))
	return append(out, m.b...), nil
}

func (codec) Unmarshal(data []byte, v interface{}) error {
	m := v.(*message)
	for len(data) > 0 {
		key, n := varint(data)
		if n == 0 {
			return errors.New("bad field key")
		}
		data = data[n:]
		switch key & 7 {
		case 0:
			_, n = varint(data)
			if n == 0 {
				return errors.New("bad varint")
			}
			data = data[n:]
		case 1:
			if len(data) < 8 {
				return errors.New("short fixed64")
			}
			data = data[8:]
		case 5:
			if len(data) < 4 {
				return errors.New("short fixed32")
			}
			data = data[4:]
		case 2:
			l, n := varint(data)
			if n == 0 || uint64(len(data)-n) < l {
				return errors.New("bad length")
			}
			if key>>3 == 1 {
				m.b = append([]byte(nil), data[n:n+int(l)]...)
			}
			data = data[n+int(l):]
		default:
			return fmt.Errorf("wire type %d", key&7)
		}
	}
	return nil
}

func appendVarint(b []byte, v uint64) []byte {
	for v >= 0x80 {
		b = append(b, byte(v)|0x80)
		v >>= 7
	}
	return append(b, byte(v))
}

func varint(b []byte) (uint64, int) {
	var v uint64
	for i := 0; i < len(b) && i < 10; i++ {
		v |= uint64(b[i]&0x7f) << (7 * uint(i))
		if b[i] < 0x80 {
			return v, i + 1
		}
	}
	return 0, 0
}

func call(conn *grpc.ClientConn, method string, in KeyProviderKeyWrapProtocolInput) (KeyProviderKeyWrapProtocolOutput, []byte, error) {
	var out KeyProviderKeyWrapProtocolOutput
	req, err := json.Marshal(in)
	if err != nil {
		return out, nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var resp message
	if err := conn.Invoke(ctx, "/keyprovider.KeyProviderService/"+method, &message{req}, &resp); err != nil {
		return out, nil, err
	}
	if err := json.Unmarshal(resp.b, &out); err != nil {
		return out, resp.b, fmt.Errorf("ocicrypt cannot read the %s answer %s: %w", method, resp.b, err)
	}
	return out, resp.b, nil
}

func unwrapInput(annotation []byte) KeyProviderKeyWrapProtocolInput {
	return KeyProviderKeyWrapProtocolInput{
		Operation:       "keyunwrap",
		KeyUnwrapParams: KeyUnwrapParams{Dc: &DecryptConfig{}, Annotation: annotation},
	}
}

func fail(code int, v map[string]interface{}) {
	_ = json.NewEncoder(os.Stdout).Encode(v)
	os.Exit(code)
}

func report(err error) {
	if s, ok := status.FromError(err); ok {
		fail(1, map[string]interface{}{"code": s.Code().String(), "message": s.Message()})
	}
	fail(2, map[string]interface{}{"error": err.Error()})
}

func main() {
	if len(os.Args) < 3 {
		fail(2, map[string]interface{}{"error": "usage: keyprovider roundtrip ADDR PROVIDER KID | unwrap ADDR ANNOTATION_B64"})
	}
	conn, err := grpc.Dial(os.Args[2], grpc.WithInsecure(), grpc.WithBlock(),
		grpc.WithTimeout(30*time.Second), grpc.WithDefaultCallOptions(grpc.ForceCodec(codec{})))
	if err != nil {
		fail(2, map[string]interface{}{"error": err.Error()})
	}
	defer conn.Close()
	switch {
	case os.Args[1] == "roundtrip" && len(os.Args) == 5:
		key := make([]byte, 32)
		nonce := make([]byte, 16)
		_, _ = rand.Read(key)
		_, _ = rand.Read(nonce)
		opts, _ := json.Marshal(PrivateLayerBlockCipherOptions{
			SymmetricKey:  key,
			CipherOptions: map[string][]byte{"nonce": nonce},
		})
		// As ocicrypt's EncryptWithKeyProvider builds it for
		// --encryption-key provider:<PROVIDER>:<KID>.
		ec := &EncryptConfig{Parameters: map[string][][]byte{os.Args[3]: {[]byte(os.Args[4])}}}
		wrapped, wrapRaw, err := call(conn, "WrapKey", KeyProviderKeyWrapProtocolInput{
			Operation:     "keywrap",
			KeyWrapParams: KeyWrapParams{Ec: ec, Optsdata: opts},
		})
		if err != nil {
			report(err)
		}
		unwrapped, unwrapRaw, err := call(conn, "UnWrapKey", unwrapInput(wrapped.KeyWrapResults.Annotation))
		if err != nil {
			report(err)
		}
		var back PrivateLayerBlockCipherOptions
		if err := json.Unmarshal(unwrapped.KeyUnwrapResults.OptsData, &back); err != nil {
			fail(2, map[string]interface{}{"error": "unwrapped optsdata is not the options: " + err.Error()})
		}
		fail(0, map[string]interface{}{
			"same_options":  string(unwrapped.KeyUnwrapResults.OptsData) == string(opts),
			"symkey_len":    len(back.SymmetricKey),
			"annotation":    base64.StdEncoding.EncodeToString(wrapped.KeyWrapResults.Annotation),
			"wrap_answer":   string(wrapRaw),
			"unwrap_answer": string(unwrapRaw),
		})
	case os.Args[1] == "unwrap" && len(os.Args) == 4:
		annotation, err := base64.StdEncoding.DecodeString(os.Args[3])
		if err != nil {
			fail(2, map[string]interface{}{"error": err.Error()})
		}
		out, _, err := call(conn, "UnWrapKey", unwrapInput(annotation))
		if err != nil {
			report(err)
		}
		fail(0, map[string]interface{}{"optsdata": base64.StdEncoding.EncodeToString(out.KeyUnwrapResults.OptsData)})
	default:
		fail(2, map[string]interface{}{"error": "usage: keyprovider roundtrip ADDR PROVIDER KID | unwrap ADDR ANNOTATION_B64"})
	}
}
