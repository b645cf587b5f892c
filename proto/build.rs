//! Code generation runs only with `--features regen`; normal builds compile the
//! checked-in code in src/generated/ and need no code generator at all.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    #[cfg(feature = "regen")]
    regen::run();
}

#[cfg(feature = "regen")]
mod regen {
    use std::path::Path;

    const PROTOS: [&str; 4] = [
        "protos/attestation-agent.proto",
        "protos/keyprovider.proto",
        "protos/attester.proto",
        "protos/health.proto",
    ];

    pub fn run() {
        for p in PROTOS {
            println!("cargo:rerun-if-changed={p}");
        }
        ttrpc();
        grpc();
    }

    fn ttrpc() {
        let out = Path::new("src/generated/ttrpc");
        std::fs::create_dir_all(out).unwrap();
        ttrpc_codegen::Codegen::new()
            .out_dir(out)
            .inputs(PROTOS)
            .include("protos")
            .rust_protobuf()
            .customize(ttrpc_codegen::Customize {
                async_all: true,
                ..Default::default()
            })
            .rust_protobuf_customize(ttrpc_codegen::ProtobufCustomize::default().gen_mod_rs(false))
            .run()
            .unwrap();
    }

    fn grpc() {
        let out = Path::new("src/generated/grpc");
        std::fs::create_dir_all(out).unwrap();
        // grpc.health.v1 comes from tonic-health on the gRPC side.
        let fds = protox::compile(&PROTOS[..3], ["protos"]).unwrap();
        tonic_prost_build::configure()
            .build_server(true)
            .build_client(true)
            .out_dir(out)
            .compile_fds(fds)
            .unwrap();
    }
}
