//! `[plugins] registries` and the pull keys: their bounds and shapes, checked
//! with the rest of the configuration (the pulls themselves are
//! `launch::pull`'s).

use super::PluginsConfig;

/// Attempts per pull, at most (`[plugins] pull_attempts`).
pub const MAX_PULL_ATTEMPTS: u32 = 10;
/// Registries listed at most.
pub const MAX_REGISTRIES: usize = 64;

/// A registry entry is `host[:port]` with an optional path, nothing else.
fn valid_entry(e: &str) -> bool {
    let (host, path) = e.split_once('/').unwrap_or((e, ""));
    let host_ok = !host.is_empty()
        && (host.contains('.') || host.contains(':'))
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c));
    let path_ok = path.is_empty()
        || path.split('/').all(|c| {
            !c.is_empty()
                && c.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
        });
    host_ok && path_ok
}

/// Config validation: (key, why) of the first problem.
pub fn check_config(p: &PluginsConfig) -> std::result::Result<(), (String, String)> {
    if p.registries.len() > MAX_REGISTRIES {
        return Err((
            "plugins.registries".into(),
            format!("{} entries, more than {MAX_REGISTRIES}", p.registries.len()),
        ));
    }
    for (i, e) in p.registries.iter().enumerate() {
        if !valid_entry(e) {
            return Err((
                format!("plugins.registries[{i}]"),
                format!("{e:?} is not host[:port] or host[:port]/path (a registry, no scheme)"),
            ));
        }
    }
    for (i, e) in p.insecure_registries.iter().enumerate() {
        let key = format!("plugins.insecure_registries[{i}]");
        if !p.dev_mode {
            return Err((
                key,
                "a registry without TLS verification is for development: set [plugins] dev_mode = true".into(),
            ));
        }
        if !p.registries.contains(e) {
            return Err((key, format!("{e:?} is not in plugins.registries")));
        }
    }
    if p.pull_attempts == 0 || p.pull_attempts > MAX_PULL_ATTEMPTS {
        return Err((
            "plugins.pull_attempts".into(),
            format!(
                "{} is not between 1 and {MAX_PULL_ATTEMPTS}",
                p.pull_attempts
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_bounds_and_shapes() {
        let mut p = PluginsConfig {
            registries: vec!["https://quay.io".into()],
            ..Default::default()
        };
        assert_eq!(check_config(&p).unwrap_err().0, "plugins.registries[0]");
        p.registries = vec!["quay.io/coco".into(), "127.0.0.1:5000".into()];
        assert!(check_config(&p).is_ok());
        p.insecure_registries = vec!["127.0.0.1:5000".into()];
        assert!(check_config(&p).unwrap_err().1.contains("dev_mode"));
        p.dev_mode = true;
        assert!(check_config(&p).is_ok());
        p.pull_attempts = MAX_PULL_ATTEMPTS;
        assert!(check_config(&p).is_ok());
        p.pull_attempts = MAX_PULL_ATTEMPTS + 1;
        assert_eq!(check_config(&p).unwrap_err().0, "plugins.pull_attempts");
        p.pull_attempts = 1;
        p.registries = vec!["r.example".into(); MAX_REGISTRIES];
        p.insecure_registries.clear();
        assert!(check_config(&p).is_ok());
        p.registries.push("r.example".into());
        assert!(check_config(&p).unwrap_err().1.contains("more than 64"));
    }
}
