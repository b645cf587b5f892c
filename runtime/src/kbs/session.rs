//! The KBS sessions attestd keeps: the last RCAR result, reused for resource
//! fetches (UnWrapKey) and, when the operator opts in, for `GetToken("kbs")`.
//!
//! A session stops being used the moment the state it attested may have changed:
//! [`Sessions::invalidate`] (a runtime measurement, an init-data binding, a 401) and
//! a plugin instance other than the one that gave the evidence (a restart or swap:
//! the session carries the instances it was made with). Concurrent callers that
//! find no usable session share one handshake and its result, success or failure,
//! so a KBS that refuses is asked once, not once per queued caller.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use attester_sdk::{Code, Error, Result};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

use super::TeeKey;

/// The longest one handshake may take, all of it (challenge, evidence from every
/// plugin, attestation): callers queued behind it wait at most this long for it.
pub const MAX_HANDSHAKE: Duration = Duration::from_secs(90);

/// A completed RCAR handshake.
pub struct KbsSession {
    pub token: String,
    pub key: TeeKey,
    pub cookie: Option<String>,
    /// The token's `exp` (seconds since the epoch), when it carries one.
    pub expires: Option<u64>,
    /// The plugin instances whose evidence the token attests.
    pub instances: Vec<Option<u64>>,
}

impl KbsSession {
    pub fn new(
        token: String,
        key: TeeKey,
        cookie: Option<String>,
        instances: Vec<Option<u64>>,
    ) -> Self {
        KbsSession {
            expires: token_expiry(&token),
            token,
            key,
            cookie,
            instances,
        }
    }

    /// Seconds left before the token expires (`None`: no `exp` in it).
    fn remaining(&self) -> Option<i128> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        self.expires.map(|e| i128::from(e) - i128::from(now))
    }
}

/// The `exp` claim of a JWT, read without verifying it: it only decides when to
/// stop reusing a token the KBS itself issued (the KBS still checks it).
pub fn token_expiry(token: &str) -> Option<u64> {
    let payload = token.split('.').nth(1)?;
    let claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
    claims.get("exp")?.as_u64()
}

/// How fresh a session must be to be reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reuse {
    /// Until the KBS refuses it or it has expired (resource fetches: a 401 costs
    /// one round trip and a new handshake).
    UntilExpired,
    /// Only while its token has more than this left: a token handed to a caller
    /// must stay valid while the caller uses it. A token without `exp` never is.
    WithMargin(Duration),
}

#[derive(Default)]
struct State {
    current: Option<Arc<KbsSession>>,
    /// Bumped by [`Sessions::invalidate`]: a handshake that began before is not kept.
    epoch: u64,
    /// Handshakes finished so far, and how the last one failed (if it did), so
    /// those who waited for it get its answer.
    finished: u64,
    last_failure: Option<(Code, String)>,
}

#[derive(Default)]
pub struct Sessions {
    state: Mutex<State>,
    /// Held for the duration of one handshake.
    handshake: tokio::sync::Mutex<()>,
}

impl Sessions {
    /// The current session if it may be reused under `reuse` by a caller whose
    /// plugins are now `instances`.
    fn usable(&self, reuse: Reuse, instances: &[Option<u64>]) -> Option<Arc<KbsSession>> {
        let st = self.lock();
        let s = st.current.as_ref()?;
        if s.instances != instances || instances.iter().any(Option::is_none) {
            return None;
        }
        let fresh = match (reuse, s.remaining()) {
            (Reuse::UntilExpired, None) => true,
            (Reuse::UntilExpired, Some(left)) => left > 0,
            (Reuse::WithMargin(m), Some(left)) => left > i128::from(m.as_secs()),
            (Reuse::WithMargin(_), None) => false,
        };
        fresh.then(|| s.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is a few plain fields, consistent at every unlock.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A usable session, or one new handshake (`handshake`) shared by every caller
    /// that is waiting for one. `instances` names the plugin instances now live.
    pub async fn get<F, Fut>(
        &self,
        reuse: Reuse,
        instances: &[Option<u64>],
        handshake: F,
    ) -> Result<Arc<KbsSession>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<KbsSession>>,
    {
        let seen = self.lock().finished;
        if let Some(s) = self.usable(reuse, instances) {
            return Ok(s);
        }
        let _one = self.handshake.lock().await;
        if let Some(s) = self.usable(reuse, instances) {
            return Ok(s);
        }
        let epoch = {
            let st = self.lock();
            if st.finished > seen {
                if let Some((code, msg)) = &st.last_failure {
                    return Err(Error::new(*code, msg.clone()));
                }
            }
            st.epoch
        };
        let r = tokio::time::timeout(MAX_HANDSHAKE, handshake())
            .await
            .unwrap_or_else(|_| {
                Err(Error::new(
                    Code::DeadlineExceeded,
                    format!("RCAR did not finish within {}s", MAX_HANDSHAKE.as_secs()),
                ))
            });
        let mut st = self.lock();
        st.finished += 1;
        match r {
            Ok(s) => {
                let s = Arc::new(s);
                st.last_failure = None;
                if st.epoch == epoch {
                    st.current = Some(s.clone());
                }
                Ok(s)
            }
            Err(e) => {
                st.last_failure = Some((e.code(), e.chain()));
                Err(e)
            }
        }
    }

    /// Forget `s` if it is still the current session (the KBS refused it); a
    /// session a concurrent caller already put in its place stays.
    pub fn refused(&self, s: &Arc<KbsSession>) {
        let mut st = self.lock();
        if st.current.as_ref().is_some_and(|c| Arc::ptr_eq(c, s)) {
            st.current = None;
        }
    }

    /// Forget the current session and any handshake under way: what it attested
    /// may no longer hold.
    pub fn invalidate(&self) {
        let mut st = self.lock();
        st.current = None;
        st.epoch += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn token(exp: Option<u64>) -> String {
        let claims = match exp {
            Some(e) => serde_json::json!({"exp": e}),
            None => serde_json::json!({}),
        };
        format!("e30.{}.sig", URL_SAFE_NO_PAD.encode(claims.to_string()))
    }

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn session(exp: Option<u64>, instances: &[Option<u64>]) -> KbsSession {
        KbsSession::new(
            token(exp),
            TeeKey::generate(super::super::tee_key::EC_ALG).unwrap(),
            None,
            instances.to_vec(),
        )
    }

    #[test]
    fn expiry_is_read_from_the_payload() {
        assert_eq!(token_expiry(&token(Some(42))), Some(42));
        assert_eq!(token_expiry(&token(None)), None);
        assert_eq!(token_expiry("not a jwt"), None);
        assert_eq!(token_expiry("a.!!!.c"), None);
    }

    #[tokio::test]
    async fn reuse_honours_the_margin_the_instances_and_invalidation() {
        let s = Sessions::default();
        let live = [Some(1)];
        let made = AtomicUsize::new(0);
        let hs = |exp| {
            made.fetch_add(1, Ordering::SeqCst);
            async move { Ok(session(exp, &[Some(1)])) }
        };
        let exp = Some(now() + 100);
        let margin = |secs| Reuse::WithMargin(Duration::from_secs(secs));
        s.get(margin(50), &live, || hs(exp)).await.unwrap();
        // 100 s left: reused under a 50 s margin, not under a 150 s one.
        s.get(margin(50), &live, || hs(exp)).await.unwrap();
        assert_eq!(made.load(Ordering::SeqCst), 1);
        s.get(margin(150), &live, || hs(exp)).await.unwrap();
        assert_eq!(made.load(Ordering::SeqCst), 2);
        // At the bound: exactly the margin left is not enough.
        s.invalidate();
        s.get(margin(0), &live, || hs(Some(now() + 60)))
            .await
            .unwrap();
        s.get(margin(60), &live, || hs(exp)).await.unwrap();
        assert_eq!(made.load(Ordering::SeqCst), 4);
        // Another plugin instance (a restart), or one that is down: not reused.
        s.get(margin(50), &[Some(2)], || hs(exp)).await.unwrap();
        s.get(margin(50), &[None], || hs(exp)).await.unwrap();
        assert_eq!(made.load(Ordering::SeqCst), 6);
        // Invalidated: a new handshake.
        s.get(margin(50), &live, || hs(exp)).await.unwrap();
        assert_eq!(made.load(Ordering::SeqCst), 6);
        s.invalidate();
        s.get(margin(50), &live, || hs(exp)).await.unwrap();
        assert_eq!(made.load(Ordering::SeqCst), 7);
        // No exp: never handed out again under a margin, reused for resources.
        s.invalidate();
        s.get(Reuse::UntilExpired, &live, || hs(None))
            .await
            .unwrap();
        s.get(Reuse::UntilExpired, &live, || hs(None))
            .await
            .unwrap();
        assert_eq!(made.load(Ordering::SeqCst), 8);
        s.get(margin(0), &live, || hs(None)).await.unwrap();
        assert_eq!(made.load(Ordering::SeqCst), 9);
        // Expired: not reused even for resources.
        s.invalidate();
        s.get(Reuse::UntilExpired, &live, || hs(Some(now() - 1)))
            .await
            .unwrap();
        s.get(Reuse::UntilExpired, &live, || hs(exp)).await.unwrap();
        assert_eq!(made.load(Ordering::SeqCst), 11);
    }

    #[tokio::test]
    async fn a_refused_session_is_dropped_only_if_still_current() {
        let s = Sessions::default();
        let live = [Some(1)];
        let exp = Some(now() + 100);
        let first = s
            .get(Reuse::UntilExpired, &live, || async {
                Ok(session(exp, &[Some(1)]))
            })
            .await
            .unwrap();
        s.refused(&first);
        let second = s
            .get(Reuse::UntilExpired, &live, || async {
                Ok(session(exp, &[Some(1)]))
            })
            .await
            .unwrap();
        s.refused(&first);
        let again = s
            .get(Reuse::UntilExpired, &live, || async {
                Err(Error::internal("not called"))
            })
            .await
            .unwrap();
        assert!(Arc::ptr_eq(&second, &again));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_callers_share_one_handshake_and_its_failure() {
        let s = Arc::new(Sessions::default());
        let calls = Arc::new(AtomicUsize::new(0));
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let (s, calls) = (s.clone(), calls.clone());
            set.spawn(async move {
                s.get(Reuse::UntilExpired, &[Some(1)], || async {
                    calls.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    Err::<KbsSession, _>(
                        Error::failed_precondition("RCAR attest: refused")
                            .with_source(std::io::Error::other("policy")),
                    )
                })
                .await
                .err()
                .unwrap()
            });
        }
        let mut errors = Vec::new();
        while let Some(e) = set.join_next().await {
            errors.push(e.unwrap());
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1, "one handshake for all");
        for e in errors {
            assert_eq!(e.code(), Code::FailedPrecondition);
            assert_eq!(e.chain(), "RCAR attest: refused: policy");
        }
        // A caller arriving after the failure tries again.
        let ok = s
            .get(Reuse::UntilExpired, &[Some(1)], || async {
                Ok(session(None, &[Some(1)]))
            })
            .await;
        assert!(ok.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_handshake_that_hangs_ends_at_the_bound() {
        let s = Sessions::default();
        let e = s
            .get(Reuse::UntilExpired, &[Some(1)], || async {
                tokio::time::sleep(MAX_HANDSHAKE + Duration::from_secs(1)).await;
                Ok(session(None, &[Some(1)]))
            })
            .await
            .err()
            .unwrap();
        assert_eq!(e.code(), Code::DeadlineExceeded);
        assert_eq!(e.message(), "RCAR did not finish within 90s");
    }
}
