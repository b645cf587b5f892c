// A client of Go's real ocicrypt library (github.com/containers/ocicrypt, pinned in
// go.mod): it encrypts and decrypts image layers through the key provider that
// OCICRYPT_KEYPROVIDER_CONFIG names, as skopeo, podman and containerd do.
// Test-only: tests/tests/image_decryption.rs runs it against attestd.
//
//	ocicrypt encrypt RECIPIENT IN OUT   encrypt one layer (a gzip blob) with a
//	                                    fresh key wrapped by RECIPIENT
//	                                    (provider:<name>:<params>); prints the
//	                                    encrypted layer's descriptor
//	ocicrypt decrypt PROVIDER OCI_DIR   decrypt every encrypted layer of the one
//	                                    image in an OCI layout with
//	                                    provider:PROVIDER; prints each layer's
//	                                    plaintext digest
//
// Prints one JSON object; exit 0 on success, 1 when ocicrypt failed (its error
// is printed), 2 on a local failure.
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/containers/ocicrypt"
	"github.com/containers/ocicrypt/helpers"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

func out(v any) {
	b, _ := json.Marshal(v)
	fmt.Println(string(b))
}

func fail(code int, err error) {
	out(map[string]string{"error": err.Error()})
	os.Exit(code)
}

func encrypt(recipient, in, outPath string) {
	data, err := os.ReadFile(in)
	if err != nil {
		fail(2, err)
	}
	cc, err := helpers.CreateCryptoConfig([]string{recipient}, nil)
	if err != nil {
		fail(1, err)
	}
	desc := ocispec.Descriptor{
		MediaType: ocispec.MediaTypeImageLayerGzip,
		Digest:    digest.FromBytes(data),
		Size:      int64(len(data)),
	}
	r, finalize, err := ocicrypt.EncryptLayer(cc.EncryptConfig, bytes.NewReader(data), desc)
	if err != nil {
		fail(1, err)
	}
	enc, err := io.ReadAll(r)
	if err != nil {
		fail(1, err)
	}
	annotations, err := finalize()
	if err != nil {
		fail(1, err)
	}
	if err := os.WriteFile(outPath, enc, 0o644); err != nil {
		fail(2, err)
	}
	out(ocispec.Descriptor{
		MediaType:   ocispec.MediaTypeImageLayerGzip + "+encrypted",
		Digest:      digest.FromBytes(enc),
		Size:        int64(len(enc)),
		Annotations: annotations,
	})
}

func readJSON(dir string, d digest.Digest, v any) {
	b, err := os.ReadFile(filepath.Join(dir, "blobs", d.Algorithm().String(), d.Encoded()))
	if err != nil {
		fail(2, err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		fail(2, err)
	}
}

func decrypt(provider, dir string) {
	cc, err := helpers.CreateDecryptCryptoConfig([]string{"provider:" + provider}, nil)
	if err != nil {
		fail(1, err)
	}
	var index ocispec.Index
	b, err := os.ReadFile(filepath.Join(dir, "index.json"))
	if err != nil {
		fail(2, err)
	}
	if err := json.Unmarshal(b, &index); err != nil || len(index.Manifests) != 1 {
		fail(2, fmt.Errorf("index.json: want one manifest (%v)", err))
	}
	var manifest ocispec.Manifest
	readJSON(dir, index.Manifests[0].Digest, &manifest)
	type layer struct {
		Encrypted digest.Digest `json:"encrypted"`
		Plain     digest.Digest `json:"plain"`
		Size      int           `json:"size"`
	}
	layers := []layer{}
	for _, l := range manifest.Layers {
		if !strings.HasSuffix(l.MediaType, "+encrypted") {
			continue
		}
		f, err := os.Open(filepath.Join(dir, "blobs", l.Digest.Algorithm().String(), l.Digest.Encoded()))
		if err != nil {
			fail(2, err)
		}
		r, plain, err := ocicrypt.DecryptLayer(cc.DecryptConfig, f, l, false)
		if err != nil {
			fail(1, err)
		}
		data, err := io.ReadAll(r)
		f.Close()
		if err != nil {
			fail(1, err)
		}
		// ocicrypt names the plaintext's digest when the encrypter knew it
		// (skopeo encrypts a stream and leaves it empty); the bytes must have it.
		got := digest.FromBytes(data)
		if plain != "" && got != plain {
			fail(1, fmt.Errorf("layer %s decrypted to %s, ocicrypt says %s", l.Digest, got, plain))
		}
		layers = append(layers, layer{Encrypted: l.Digest, Plain: got, Size: len(data)})
	}
	out(map[string]any{"layers": layers})
}

func main() {
	switch {
	case len(os.Args) == 5 && os.Args[1] == "encrypt":
		encrypt(os.Args[2], os.Args[3], os.Args[4])
	case len(os.Args) == 4 && os.Args[1] == "decrypt":
		decrypt(os.Args[2], os.Args[3])
	default:
		fmt.Fprintln(os.Stderr, "usage: ocicrypt encrypt RECIPIENT IN OUT | ocicrypt decrypt PROVIDER OCI_DIR")
		os.Exit(2)
	}
}
