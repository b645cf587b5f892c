//! Image references, `name[:tag][@sha256:<digest>]`: parsed and checked where
//! the configuration is validated, used by the launchers and selection. Below
//! both, so configuration never depends on the launchers.

use attester_sdk::{Error, Result};

/// `name[:tag][@sha256:<hex>]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    pub name: String,
    pub tag: Option<String>,
    /// `sha256:<64 hex>`.
    pub digest: Option<String>,
}

/// `name[:tag]` → (name, tag): a ':' after the last '/' starts the tag (a ':'
/// before it is a registry port, as in `host:5000/name`).
fn split_tag(s: &str) -> (&str, Option<&str>) {
    let slash = s.rfind('/').map_or(0, |i| i + 1);
    match s[slash..].find(':') {
        Some(i) => (&s[..slash + i], Some(&s[slash + i + 1..])),
        None => (s, None),
    }
}

impl ImageRef {
    /// The repository of a reference, without tag or digest (the reference need
    /// not be valid as a pin: `host:5000/name` alone is a repository).
    pub fn repository(s: &str) -> &str {
        split_tag(s.split_once('@').map_or(s, |(r, _)| r)).0
    }

    pub fn parse(s: &str) -> Result<ImageRef> {
        let bad = |why: &str| Error::invalid_argument(format!("image reference {s:?}: {why}"));
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => {
                let hex = d
                    .strip_prefix("sha256:")
                    .ok_or_else(|| bad("the digest must be sha256:<64 hex digits>"))?;
                if hex.len() != 64
                    || !hex
                        .bytes()
                        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
                {
                    return Err(bad("the digest must be sha256:<64 lowercase hex digits>"));
                }
                (r, Some(d.to_string()))
            }
            None => (s, None),
        };
        let (name, tag) = split_tag(rest);
        let tag = tag.map(str::to_string);
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-/:".contains(&b))
        {
            return Err(bad(
                "the name must be lowercase letters, digits and . _ - / :",
            ));
        }
        if tag.as_deref().is_some_and(|t| t.is_empty()) {
            return Err(bad("empty tag"));
        }
        if digest.is_none() && tag.is_none() {
            return Err(bad("no tag and no digest"));
        }
        Ok(ImageRef {
            name: name.to_string(),
            tag,
            digest,
        })
    }

    /// `name@digest`, the form containers are started by.
    pub fn pinned(&self, digest: &str) -> String {
        format!("{}@{digest}", self.name)
    }
}

impl std::fmt::Display for ImageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.name)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:14d11cd195491ce715c3b96f94992430610eec5f181b158764d09013e2addd06";

    #[test]
    fn references_parse() {
        let r = ImageRef::parse(&format!("localhost/attestd/attester-tdx@{D}")).unwrap();
        assert_eq!(r.name, "localhost/attestd/attester-tdx");
        assert_eq!((r.tag, r.digest.as_deref()), (None, Some(D)));
        let r = ImageRef::parse("registry:5000/a/b:1.0").unwrap();
        assert_eq!(
            (r.name.as_str(), r.tag.as_deref()),
            ("registry:5000/a/b", Some("1.0"))
        );
        assert_eq!(r.digest, None);
        let r = ImageRef::parse(&format!("a/b:1.0@{D}")).unwrap();
        assert_eq!(r.to_string(), format!("a/b:1.0@{D}"));
        assert_eq!(r.pinned(D), format!("a/b@{D}"));
        // The repository alone, registry port and all (select.rs's hand-made
        // split took `registry` for `registry:5000/a/b`).
        for (s, want) in [
            ("registry:5000/a/b", "registry:5000/a/b"),
            ("registry:5000/a/b:1.0", "registry:5000/a/b"),
            (
                &format!("registry:5000/a/b@{D}") as &str,
                "registry:5000/a/b",
            ),
            (
                &format!("registry:5000/a/b:1.0@{D}") as &str,
                "registry:5000/a/b",
            ),
            (
                "localhost/attestd/attester-tdx",
                "localhost/attestd/attester-tdx",
            ),
        ] {
            assert_eq!(ImageRef::repository(s), want, "{s}");
        }
    }

    #[test]
    fn bad_references_say_why() {
        let msg = |s: &str| ImageRef::parse(s).unwrap_err().message().to_string();
        assert_eq!(
            msg("a/b@sha256:abc"),
            "image reference \"a/b@sha256:abc\": the digest must be sha256:<64 lowercase hex digits>"
        );
        assert_eq!(
            msg("a/b@md5:abc"),
            "image reference \"a/b@md5:abc\": the digest must be sha256:<64 hex digits>"
        );
        assert_eq!(msg("a/b"), "image reference \"a/b\": no tag and no digest");
        assert_eq!(
            msg("A/b:1"),
            "image reference \"A/b:1\": the name must be lowercase letters, digits and . _ - / :"
        );
        assert_eq!(msg("a/b:"), "image reference \"a/b:\": empty tag");
    }
}
