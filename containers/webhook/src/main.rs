use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use attestd_webhook::config::{Config, Lock};
use attestd_webhook::manifests::WebhookUrl;
use attestd_webhook::{certs, server, tls};
use clap::{Parser, Subcommand};

/// attestd-webhook: injects attestd and the pod's pinned attester into confidential pods.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve POST /mutate, GET /healthz and /readyz over HTTPS
    Serve(ServeArgs),
    /// Write a CA and a serving certificate for the webhook's Service, print the caBundle
    Certs(CertsArgs),
    /// Print every manifest (the image pinned from images.lock) for `kubectl apply -f -`
    Manifests(ManifestsArgs),
}

#[derive(clap::Args)]
struct ManifestsArgs {
    /// The images.lock naming the webhook's image and the attesters it injects
    /// (containers/build.sh writes containers/images.lock; docs/deployment.md,
    /// "images.lock", for images pushed elsewhere). Required: a default relative
    /// to wherever the command runs would pick up whatever file is there.
    #[arg(long)]
    lock: PathBuf,
    /// `certs` output (ca.crt, tls.crt, tls.key): the caBundle from it (the
    /// Secret is made from the files with kubectl, keeping the key off stdout)
    #[arg(
        long,
        conflicts_with = "cert_manager",
        required_unless_present = "cert_manager"
    )]
    certs_dir: Option<PathBuf>,
    /// Let cert-manager issue the certificate and inject the CA instead
    #[arg(long)]
    cert_manager: bool,
    /// Register the webhook by this https:// URL on the node instead of by its
    /// Service (single-node and development installs): one replica on the
    /// node's network, listening where the URL points
    #[arg(long, conflicts_with = "cert_manager")]
    url: Option<WebhookUrl>,
    /// Add a NetworkPolicy letting only this address block (the API server's;
    /// repeat for more) reach the webhook's pods (docs/deployment.md, "Admit
    /// only the API server")
    #[arg(long = "api-server-cidr", value_name = "CIDR")]
    api_server_cidrs: Vec<String>,
    /// Leave out the ValidatingAdmissionPolicy that refuses updates to what
    /// was injected (its v1 API needs Kubernetes 1.30; for 1.29)
    #[arg(long)]
    without_pin_policy: bool,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// webhook.toml. One given must exist [default: /etc/attestd-webhook/webhook.toml;
    /// absent, the defaults]
    #[arg(long, env = "ATTESTD_WEBHOOK_CONFIG")]
    config: Option<PathBuf>,
    #[arg(long, default_value = "0.0.0.0:8443")]
    listen: String,
    #[arg(long, default_value = "/etc/attestd-webhook/tls/tls.crt")]
    cert: PathBuf,
    #[arg(long, default_value = "/etc/attestd-webhook/tls/tls.key")]
    key: PathBuf,
    /// How often the certificate files are checked for a rotation
    #[arg(long, default_value_t = 10_000)]
    reload_interval_ms: u64,
    /// Serve only clients presenting a certificate this CA (PEM) signed: the
    /// API server, given `certs`' client.crt in its admission kubeconfig
    /// (docs/deployment.md, "Admit only the API server")
    #[arg(long)]
    client_ca: Option<PathBuf>,
}

#[derive(clap::Args)]
struct CertsArgs {
    #[arg(long, default_value = "attestd-webhook")]
    service: String,
    #[arg(long, default_value = "attestd-system")]
    namespace: String,
    /// Directory for ca.crt, tls.crt, tls.key, client.crt and client.key (created)
    #[arg(long)]
    out_dir: PathBuf,
    /// A certificate for the host of this https:// URL (`manifests --url`)
    /// instead of the Service's names
    #[arg(long, conflicts_with_all = ["service", "namespace"])]
    url: Option<WebhookUrl>,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Serve(a) => serve(a),
        Cmd::Certs(a) => write_certs(a),
        Cmd::Manifests(a) => print_manifests(a),
    };
    // One line, as attestd prints it: what failed and why, not a backtrace.
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Where the ConfigMap is mounted; absent, the defaults.
const DEFAULT_CONFIG: &str = "/etc/attestd-webhook/webhook.toml";

fn serve(a: ServeArgs) -> Result<()> {
    // The project's one logging set-up: ATTESTD_LOG, else RUST_LOG, else info.
    attester_sdk::init_logging("info");
    let config = match &a.config {
        // Given, it must be there: a mistyped path would otherwise serve defaults.
        Some(path) => Config::load(path)?,
        None if Path::new(DEFAULT_CONFIG).exists() => Config::load(Path::new(DEFAULT_CONFIG))?,
        None => {
            tracing::info!(config = DEFAULT_CONFIG, "no config file: the defaults");
            Config::default()
        }
    };
    let lock = Lock::load(&config.images_lock)?;
    let certs = tls::Reloading::new(&a.cert, &a.key)?;
    let client_ca = a
        .client_ca
        .as_deref()
        .map(tls::read_client_ca)
        .transpose()?;
    // Checked now, not at the first connection.
    certs.server_config(client_ca.as_deref())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&a.listen)
            .await
            .with_context(|| format!("cannot listen on {}", a.listen))?;
        tracing::info!(
            listen = %listener.local_addr()?,
            lock = %config.images_lock.display(),
            tees = ?lock.images.keys().collect::<Vec<_>>(),
            "serving"
        );
        certs
            .clone()
            .watch(Duration::from_millis(a.reload_interval_ms.max(100)));
        let state = Arc::new(server::State::new(config, lock));
        tokio::select! {
            r = server::serve(listener, certs, client_ca, state) => r.context("serving"),
            _ = terminated() => {
                tracing::info!("terminated");
                Ok(())
            }
        }
    })
}

/// SIGTERM (the kubelet stopping the pod) or Ctrl-C.
async fn terminated() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn write_certs(a: CertsArgs) -> Result<()> {
    let names = match &a.url {
        Some(u) => vec![u.cert_name().to_string()],
        None => certs::service_names(&a.service, &a.namespace),
    };
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let ca = certs::authority()?;
    let (cert, key) = certs::serving(&ca, &names)?;
    let (client_cert, client_key) = certs::client(&ca, "kube-apiserver")?;
    std::fs::create_dir_all(&a.out_dir)
        .with_context(|| format!("cannot create {}", a.out_dir.display()))?;
    let write = |name: &str, body: &str, mode: u32| -> Result<()> {
        certs::write_file(&a.out_dir, name, body, mode)
            .with_context(|| format!("cannot write {}", a.out_dir.join(name).display()))
    };
    write("ca.crt", &ca.pem, 0o644)?;
    write("tls.crt", &cert, 0o644)?;
    write("tls.key", &key, 0o600)?;
    write("client.crt", &client_cert, 0o644)?;
    write("client.key", &client_key, 0o600)?;
    use base64::Engine as _;
    println!(
        "{}",
        base64::engine::general_purpose::STANDARD.encode(ca.pem.as_bytes())
    );
    eprintln!(
        "wrote ca.crt, tls.crt and tls.key to {} for {}, and client.crt and client.key for the \
         API server (serve --client-ca ca.crt); the line above is the caBundle",
        a.out_dir.display(),
        names.join(", ")
    );
    Ok(())
}

fn print_manifests(a: ManifestsArgs) -> Result<()> {
    use attestd_webhook::manifests::{render, Endpoint, Tls};
    let lock = Lock::load(&a.lock)?;
    let tls = match a.certs_dir {
        Some(dir) => {
            let read = |name: &str| {
                let p = dir.join(name);
                std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))
            };
            // Both must be there for the Secret made from them below.
            for f in ["tls.crt", "tls.key"] {
                let p = dir.join(f);
                if !p.is_file() {
                    anyhow::bail!(
                        "{} is missing: run attestd-webhook certs first",
                        p.display()
                    );
                }
            }
            eprintln!(
                "the serving certificate's Secret is not in this output (its key would go down \
                 the pipe); once the namespace exists:\n  kubectl -n attestd-system create \
                 secret tls attestd-webhook-tls --cert={} --key={}",
                dir.join("tls.crt").display(),
                dir.join("tls.key").display()
            );
            Tls::Files {
                ca: read("ca.crt")?,
            }
        }
        None => Tls::CertManager,
    };
    let endpoint = a.url.map_or(Endpoint::Service, Endpoint::Url);
    let mut out = render(&lock, &tls, &endpoint)?;
    if !a.api_server_cidrs.is_empty() {
        let policy =
            attestd_webhook::manifests::network_policy(&a.api_server_cidrs, &endpoint, 8443)?;
        if !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str(&policy);
    }
    if !a.without_pin_policy {
        if !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str("---\n");
        out.push_str(attestd_webhook::manifests::PIN_POLICY);
    }
    print!("{out}");
    Ok(())
}
