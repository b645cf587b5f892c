//! `attestd client`: call a running attestd over its AA API.

use anyhow::{anyhow, Result};
use attestd::aa_client::AaClient;
use attestd::run::DEFAULT_ATTESTATION_SOCK;
use attestd::server::GrpcAddr;
use attestd::service::MeasurementEvent;
use clap::{Args, Subcommand};

use super::{print_bytes, runtime_data, sdk};

#[derive(Args)]
pub(crate) struct ClientArgs {
    /// ttrpc AA socket of the running attestd.
    #[arg(long = "attestation_sock", default_value = DEFAULT_ATTESTATION_SOCK)]
    attestation_sock: String,
    /// Use gRPC at this address (host:port or unix:///path) instead of ttrpc.
    #[arg(long)]
    grpc: Option<GrpcAddr>,
    /// Give up on connecting and on the call after this long (upstream clients
    /// wait 50 s).
    #[arg(long, default_value_t = 50_000)]
    timeout_ms: u64,
    #[command(subcommand)]
    call: Call,
}

#[derive(Subcommand)]
pub(crate) enum Call {
    /// GetEvidence: the primary plugin's evidence for the runtime data (JSON)
    GetEvidence {
        /// Runtime data: text, @file, or hex:<hex>.
        #[arg(long, default_value = "")]
        runtime_data: String,
    },
    /// GetAdditionalEvidence: every additional device's evidence, as upstream composes it
    GetAdditionalEvidence {
        /// Runtime data: text, @file, or hex:<hex>.
        #[arg(long, default_value = "")]
        runtime_data: String,
    },
    /// GetTeeType: the primary plugin's TEE
    GetTeeType,
    /// GetAdditionalTees: the additional devices' TEEs, a JSON list
    GetAdditionalTees,
    /// GetToken: a token of this type ("kbs" or "coco_as") from the configured service
    GetToken {
        /// "kbs" (the KBS token and the TEE key pair, as upstream) or "coco_as".
        token_type: String,
    },
    /// BindInitData: bind the init-data digest to the TEE (once per boot)
    BindInitData {
        /// Digest, hex or base64 (the output says which it was read as).
        digest: String,
    },
    /// ExtendRuntimeMeasurement: record an event in the log and extend a register
    ExtendRuntimeMeasurement {
        /// The event's domain (upstream: e.g. github.com/confidential-containers).
        domain: String,
        /// The event's operation (e.g. PullImage).
        operation: String,
        /// The event's content (e.g. the image reference).
        content: String,
        /// The register to extend [default: [eventlog_config] init_pcr].
        #[arg(long)]
        register: Option<u64>,
    },
}

pub(crate) async fn cmd_client(a: ClientArgs) -> Result<()> {
    let deadline = std::time::Duration::from_millis(a.timeout_ms);
    let client = match &a.grpc {
        Some(addr) => AaClient::grpc(addr, deadline).await,
        None => AaClient::ttrpc(&a.attestation_sock)
            .await
            .map(|c| c.with_deadline(deadline)),
    }
    .map_err(sdk)?;
    match a.call {
        Call::GetEvidence { runtime_data: d } => {
            print_bytes(&client.get_evidence(runtime_data(&d)?).await.map_err(sdk)?)
        }
        Call::GetAdditionalEvidence { runtime_data: d } => print_bytes(
            &client
                .get_additional_evidence(runtime_data(&d)?)
                .await
                .map_err(sdk)?,
        ),
        Call::GetTeeType => {
            println!("{}", client.get_tee_type().await.map_err(sdk)?);
            Ok(())
        }
        Call::GetAdditionalTees => {
            // A JSON list, `[]` for none: one form whatever the count.
            let tees = client.get_additional_tees().await.map_err(sdk)?;
            println!("{}", serde_json::to_string(&tees)?);
            Ok(())
        }
        Call::GetToken { token_type } => {
            print_bytes(&client.get_token(&token_type).await.map_err(sdk)?)
        }
        Call::BindInitData { digest } => {
            let (d, form) = init_data_digest(&digest)?;
            let n = d.len();
            client.bind_init_data(d).await.map_err(sdk)?;
            println!("ok (digest read as {form}, {n} bytes)");
            Ok(())
        }
        Call::ExtendRuntimeMeasurement {
            domain,
            operation,
            content,
            register,
        } => {
            let r = client
                .extend_runtime_measurement(MeasurementEvent {
                    domain,
                    operation,
                    content,
                    register_index: register,
                })
                .await
                .map_err(sdk)?;
            println!("{r}");
            Ok(())
        }
    }
}

/// A digest given as hex or as base64 (init-data digests travel in both forms),
/// and which form it was read as. Hex is tried first: a hex string of a digest's
/// length is never meant as base64.
fn init_data_digest(s: &str) -> Result<(Vec<u8>, &'static str)> {
    use base64::Engine as _;
    if let Ok(d) = hex::decode(s) {
        return Ok((d, "hex"));
    }
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .map(|d| (d, "base64"))
        .map_err(|_| anyhow!("digest {s:?} is neither hex nor base64"))
}
