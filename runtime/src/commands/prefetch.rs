//! `attestd prefetch`: the images of an images.lock into the oci backend's
//! directory, for an image build (the generic pod VM's, containers/podvm/build.sh).

use std::path::PathBuf;

use anyhow::{bail, Result};
use attestd::config::image_ref::ImageRef;
use clap::Args;

use super::sdk;

#[derive(Args)]
pub(crate) struct PrefetchArgs {
    /// The lock whose [images.*] to prefetch, each from podman's store by its
    /// name and digest.
    #[arg(long, default_value = "/usr/share/attestd/images.lock")]
    images_lock: PathBuf,
    /// The `[plugins] oci_dir` the image's attestd will use, as seen from here
    /// (under the image's root while building it).
    #[arg(long)]
    oci_dir: PathBuf,
    /// Only these TEEs' images [default: every one of the lock].
    tees: Vec<String>,
}

pub(crate) async fn cmd_prefetch(a: PrefetchArgs) -> Result<()> {
    attester_sdk::init_logging("warn");
    let lock = attestd::select::read_lock(&a.images_lock).map_err(sdk)?;
    if lock.is_empty() {
        bail!("{} has no [images.*] to prefetch", a.images_lock.display());
    }
    if let Some(t) = a.tees.iter().find(|t| !lock.contains_key(*t)) {
        bail!("{} has no [images.{t}]", a.images_lock.display());
    }
    for (tee, entry) in &lock {
        if !a.tees.is_empty() && !a.tees.contains(tee) {
            continue;
        }
        let r = ImageRef::parse(&entry.pinned()).map_err(sdk)?;
        let rootfs = attestd::launch::oci::prefetch(&a.oci_dir, &r, &entry.digest)
            .await
            .map_err(|e| sdk(e.context(format!("cannot prefetch the {tee} image"))))?;
        println!("{tee} {} {}", r.pinned(&entry.digest), rootfs.display());
    }
    Ok(())
}
