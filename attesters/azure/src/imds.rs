//! Azure IMDS, the instance metadata service at 169.254.169.254: the VCEK for an SNP
//! CVM (THIM) and the TD quote for a TDX CVM. The crates hard-code the address and
//! wait without a deadline; here the base URL is configurable (a fake one in tests)
//! and every request has one. Within it, a request IMDS cannot be reached for
//! yet (the network still coming up at boot: attestd does not wait for it) is
//! tried again.

use std::time::{Duration, Instant};

use attester_sdk::{Code, Error, Result};
use base64::engine::general_purpose::{URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine as _;

/// Where IMDS answers on every Azure VM.
pub const DEFAULT_URL: &str = "http://169.254.169.254";
/// Deadline of one IMDS request.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest IMDS answer read (a VCEK chain or a TD quote is a few KiB).
const MAX_BODY: u64 = 1 << 20;
/// Pause between attempts while IMDS cannot be reached.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

const VCEK_PATH: &str = "/metadata/THIM/amd/certification";
const TD_QUOTE_PATH: &str = "/acc/tdquote";

/// An IMDS client.
#[derive(Clone)]
pub struct Imds {
    base: String,
    timeout: Duration,
    agent: ureq::Agent,
}

impl Imds {
    pub fn new(base: &str, timeout: Duration) -> Imds {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            // IMDS is link-local: never through a proxy.
            .proxy(None)
            .build()
            .new_agent();
        Imds {
            base: base.trim_end_matches('/').to_string(),
            timeout,
            agent,
        }
    }

    /// `send` with the time left of this request's deadline, again while IMDS
    /// cannot be reached (no route, refused, no address yet), until the deadline.
    fn call(
        &self,
        send: impl Fn(Duration) -> std::result::Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> std::result::Result<ureq::http::Response<ureq::Body>, ureq::Error> {
        let deadline = Instant::now() + self.timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match send(left) {
                Err(e) if unreachable(&e) && left > RETRY_PAUSE * 2 => {
                    std::thread::sleep(RETRY_PAUSE)
                }
                r => return r,
            }
        }
    }

    fn fail(&self, what: &str, e: ureq::Error) -> Error {
        let code = match &e {
            ureq::Error::Timeout(_) => Code::DeadlineExceeded,
            ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::TimedOut => {
                Code::DeadlineExceeded
            }
            ureq::Error::BodyExceedsLimit(_) | ureq::Error::Protocol(_) => Code::Internal,
            _ => Code::Unavailable,
        };
        let msg = if code == Code::DeadlineExceeded {
            format!(
                "{what}: IMDS at {} did not answer within {:?}",
                self.base, self.timeout
            )
        } else if unreachable(&e) {
            format!(
                "{what}: IMDS at {} could not be reached within {:?}",
                self.base, self.timeout
            )
        } else {
            format!("{what}: IMDS at {}", self.base)
        };
        Error::new(code, msg).with_source(e)
    }

    fn answer(
        &self,
        what: &str,
        r: std::result::Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<serde_json::Value> {
        let mut r = r.map_err(|e| self.fail(what, e))?;
        let status = r.status();
        let body = r
            .body_mut()
            .with_config()
            .limit(MAX_BODY)
            .read_to_vec()
            .map_err(|e| self.fail(what, e))?;
        if !status.is_success() {
            let code = if status.is_server_error() || status.as_u16() == 429 {
                Code::Unavailable
            } else {
                Code::Internal
            };
            return Err(Error::new(
                code,
                format!(
                    "{what}: IMDS at {} answered {status}: {}",
                    self.base,
                    String::from_utf8_lossy(&body[..body.len().min(200)]).trim()
                ),
            ));
        }
        serde_json::from_slice(&body).map_err(|e| {
            Error::internal(format!(
                "{what}: IMDS answered JSON this attester cannot read"
            ))
            .with_source(e)
        })
    }

    /// The VCEK of this SNP CVM's chip, DER (IMDS serves it as PEM with the AMD chain).
    pub fn vcek_der(&self) -> Result<Vec<u8>> {
        const WHAT: &str = "cannot fetch the VCEK";
        let r = self.call(|left| {
            self.agent
                .get(format!("{}{VCEK_PATH}", self.base))
                .header("Metadata", "true")
                .config()
                .timeout_global(Some(left))
                .build()
                .call()
        });
        let v = self.answer(WHAT, r)?;
        let pem = v
            .get("vcekCert")
            .and_then(|c| c.as_str())
            .ok_or_else(|| Error::internal(format!("{WHAT}: IMDS's answer has no vcekCert")))?;
        first_pem_certificate(pem).map_err(|e| e.context(WHAT))
    }

    /// A TD quote for `td_report` (the TD report bytes out of the HCL report).
    pub fn td_quote(&self, td_report: &[u8]) -> Result<Vec<u8>> {
        const WHAT: &str = "cannot fetch the TD quote";
        let body = serde_json::json!({ "report": URL_SAFE_NO_PAD.encode(td_report) }).to_string();
        let r = self.call(|left| {
            self.agent
                .post(format!("{}{TD_QUOTE_PATH}", self.base))
                .header("Metadata", "true")
                .header("Content-Type", "application/json")
                .header("Accept", "application/json")
                .config()
                .timeout_global(Some(left))
                .build()
                .send(body.as_bytes())
        });
        let v = self.answer(WHAT, r)?;
        let q = v
            .get("quote")
            .and_then(|c| c.as_str())
            .ok_or_else(|| Error::internal(format!("{WHAT}: IMDS's answer has no quote")))?;
        // IMDS sends unpadded base64url; accept padding too.
        URL_SAFE_NO_PAD
            .decode(q.trim_end_matches('='))
            .or_else(|_| URL_SAFE.decode(q))
            .map_err(|e| {
                Error::internal(format!("{WHAT}: the quote is not base64url")).with_source(e)
            })
    }
}

/// The DER bytes of the first certificate in `pem`.
pub fn first_pem_certificate(pem: &str) -> Result<Vec<u8>> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let start = pem
        .find(BEGIN)
        .ok_or_else(|| Error::internal("no PEM certificate found"))?
        + BEGIN.len();
    let len = pem[start..]
        .find(END)
        .ok_or_else(|| Error::internal("the PEM certificate has no END line"))?;
    let b64: String = pem[start..start + len]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| Error::internal("the PEM certificate is not base64").with_source(e))
}

/// IMDS cannot be reached (yet): no route, nothing listening, no address.
fn unreachable(e: &ureq::Error) -> bool {
    use std::io::ErrorKind as K;
    match e {
        ureq::Error::ConnectionFailed | ureq::Error::HostNotFound => true,
        ureq::Error::Io(io) => matches!(
            io.kind(),
            K::ConnectionRefused | K::NetworkUnreachable | K::HostUnreachable | K::AddrNotAvailable
        ),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::bytes as fixture;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;

    /// A one-shot HTTP server answering `status` and `body`; returns its URL and a
    /// handle yielding the request it got (head and body).
    fn serve_once(
        status: &'static str,
        body: String,
        delay: Duration,
    ) -> (String, std::thread::JoinHandle<(String, Vec<u8>)>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let h = std::thread::spawn(move || answer_one(&l, status, &body, delay));
        (url, h)
    }

    /// Accept one request on `l` and answer `status` and `body` after `delay`:
    /// the request's head and body.
    fn answer_one(l: &TcpListener, status: &str, body: &str, delay: Duration) -> (String, Vec<u8>) {
        let (s, _) = l.accept().unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut head = String::new();
        let mut len = 0usize;
        loop {
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap();
            }
            if line == "\r\n" {
                break;
            }
            head.push_str(&line);
        }
        let mut req_body = vec![0; len];
        r.read_exact(&mut req_body).unwrap();
        std::thread::sleep(delay);
        let mut s = s;
        let _ = write!(
            s,
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        (head, req_body)
    }

    #[test]
    fn vcek_is_the_first_certificate_as_der() {
        let pem = String::from_utf8(fixture("snp-vcek.pem")).unwrap();
        let body = serde_json::json!({"vcekCert": pem, "certificateChain": ""}).to_string();
        let (url, h) = serve_once("200 OK", body, Duration::ZERO);
        let der = Imds::new(&url, DEFAULT_TIMEOUT).vcek_der().unwrap();
        let (head, _) = h.join().unwrap();
        assert!(
            head.starts_with("GET /metadata/THIM/amd/certification "),
            "{head}"
        );
        assert!(
            head.to_ascii_lowercase().contains("metadata: true"),
            "{head}"
        );
        // DER SEQUENCE with a two-byte length.
        assert_eq!(&der[..2], &[0x30, 0x82]);
        assert_eq!(der.len(), 4 + u16::from_be_bytes([der[2], der[3]]) as usize);
    }

    #[test]
    fn td_quote_posts_the_report_and_decodes_the_answer() {
        let quote = fixture("tdx-td-quote.bin");
        let body = serde_json::json!({"quote": URL_SAFE_NO_PAD.encode(&quote)}).to_string();
        let (url, h) = serve_once("200 OK", body, Duration::ZERO);
        let got = Imds::new(&url, DEFAULT_TIMEOUT)
            .td_quote(&[7; 1024])
            .unwrap();
        assert_eq!(got, quote);
        let (head, req) = h.join().unwrap();
        assert!(head.starts_with("POST /acc/tdquote "), "{head}");
        let v: serde_json::Value = serde_json::from_slice(&req).unwrap();
        assert_eq!(
            URL_SAFE_NO_PAD
                .decode(v["report"].as_str().unwrap())
                .unwrap(),
            vec![7; 1024]
        );
    }

    fn unused_port() -> u16 {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    #[test]
    fn imds_down_is_unavailable_after_trying_until_the_deadline() {
        let port = unused_port();
        let t = Instant::now();
        let e = Imds::new(
            &format!("http://127.0.0.1:{port}"),
            Duration::from_millis(900),
        )
        .td_quote(&[0; 8])
        .unwrap_err();
        let took = t.elapsed();
        assert_eq!(e.code(), Code::Unavailable);
        assert_eq!(
            e.message(),
            format!("cannot fetch the TD quote: IMDS at http://127.0.0.1:{port} could not be reached within 900ms")
        );
        // Tried again while the deadline allowed, and not past it.
        assert!(took >= Duration::from_millis(500), "{took:?}");
        assert!(took < Duration::from_millis(1500), "{took:?}");
    }

    #[test]
    fn imds_reached_once_the_network_is_up_answers() {
        // At boot attestd does not wait for the network: IMDS listens late.
        let port = unused_port();
        let pem = String::from_utf8(fixture("snp-vcek.pem")).unwrap();
        let body = serde_json::json!({"vcekCert": pem, "certificateChain": ""}).to_string();
        let h = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(700));
            let l = TcpListener::bind(("127.0.0.1", port)).unwrap();
            answer_one(&l, "200 OK", &body, Duration::ZERO)
        });
        let der = Imds::new(&format!("http://127.0.0.1:{port}"), Duration::from_secs(10))
            .vcek_der()
            .unwrap();
        h.join().unwrap();
        assert_eq!(der[0], 0x30, "a DER certificate");
    }

    #[test]
    fn slow_imds_hits_the_deadline() {
        let (url, _h) = serve_once("200 OK", "{}".into(), Duration::from_secs(3));
        let e = Imds::new(&url, Duration::from_millis(300))
            .vcek_der()
            .unwrap_err();
        assert_eq!(e.code(), Code::DeadlineExceeded, "{}", e.chain());
        assert!(
            e.message().contains("did not answer within 300ms"),
            "{}",
            e.message()
        );
    }

    #[test]
    fn error_status_and_bad_answers_are_named() {
        let (url, _h) = serve_once("503 Service Unavailable", "busy".into(), Duration::ZERO);
        let e = Imds::new(&url, DEFAULT_TIMEOUT)
            .td_quote(&[0; 8])
            .unwrap_err();
        assert_eq!(e.code(), Code::Unavailable);
        assert!(
            e.message()
                .ends_with("answered 503 Service Unavailable: busy"),
            "{}",
            e.message()
        );

        let (url, _h) = serve_once("200 OK", r#"{"other":1}"#.into(), Duration::ZERO);
        let e = Imds::new(&url, DEFAULT_TIMEOUT).vcek_der().unwrap_err();
        assert_eq!(
            e.message(),
            "cannot fetch the VCEK: IMDS's answer has no vcekCert"
        );

        let (url, _h) = serve_once("200 OK", r#"{"quote":"***"}"#.into(), Duration::ZERO);
        let e = Imds::new(&url, DEFAULT_TIMEOUT)
            .td_quote(&[0; 8])
            .unwrap_err();
        assert_eq!(
            e.message(),
            "cannot fetch the TD quote: the quote is not base64url"
        );

        let (url, _h) = serve_once("200 OK", "not json".into(), Duration::ZERO);
        let e = Imds::new(&url, DEFAULT_TIMEOUT)
            .td_quote(&[0; 8])
            .unwrap_err();
        assert_eq!(e.code(), Code::Internal);
    }

    #[test]
    fn pem_without_certificate_is_refused() {
        assert!(first_pem_certificate("hello").is_err());
        assert!(first_pem_certificate("-----BEGIN CERTIFICATE-----\nAAAA").is_err());
        assert!(
            first_pem_certificate("-----BEGIN CERTIFICATE-----\n*\n-----END CERTIFICATE-----")
                .is_err()
        );
    }
}
