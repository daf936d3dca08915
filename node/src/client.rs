//! A blocking client of the local API, for the CLI. It finds the node
//! through its data dir (`api.addr`, `api.token`), and turns every error
//! answer into [`ClientError::Api`] with the server's code and message.

use crate::datadir::{ADDR_FILE, TOKEN_FILE};
use crate::error::ClientError;
use crate::types::{self, StreamEvent};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    token: String,
    agent: ureq::Agent,
    /// Where the address came from (to say "not running" on a stale file).
    data_dir: Option<PathBuf>,
    /// The listener proved it holds the token (`prove_listener`).
    proven: std::sync::OnceLock<()>,
}

impl Client {
    /// The node running on `dir` (reads `api.addr` and `api.token`).
    pub fn from_data_dir(dir: &Path) -> Result<Client, ClientError> {
        let addr = match std::fs::read_to_string(dir.join(ADDR_FILE)) {
            Ok(a) => a,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ClientError::NotRunning(dir.to_path_buf()))
            }
            Err(source) => {
                return Err(ClientError::Io {
                    path: dir.join(ADDR_FILE),
                    source,
                })
            }
        };
        let token = match std::fs::read_to_string(dir.join(TOKEN_FILE)) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ClientError::NoToken(dir.to_path_buf()))
            }
            Err(source) => {
                return Err(ClientError::Io {
                    path: dir.join(TOKEN_FILE),
                    source,
                })
            }
        };
        let mut c = Client::new(addr.trim(), token.trim());
        c.data_dir = Some(dir.to_path_buf());
        Ok(c)
    }

    /// A node at `addr` (`127.0.0.1:PORT`) with this token.
    pub fn new(addr: &str, token: &str) -> Client {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(5))
            // create_universe may wait ~10 s for KeyPackages.
            .timeout_read(Duration::from_secs(60))
            .build();
        Client {
            base: format!("http://{addr}"),
            token: token.to_string(),
            agent,
            data_dir: None,
            proven: std::sync::OnceLock::new(),
        }
    }

    /// A request carrying the token: only to a listener that proved it
    /// holds it (see `crate::api_proof`), when the address came from a
    /// data dir's `api.addr`.
    fn req(&self, method: &str, path: &str) -> Result<ureq::Request, ClientError> {
        if self.data_dir.is_some() {
            self.prove_listener()?;
        }
        Ok(self
            .agent
            .request(method, &format!("{}{}", self.base, path))
            .set("Authorization", &format!("Bearer {}", self.token)))
    }

    /// Asks the listener to prove it holds our token (once per client).
    fn prove_listener(&self) -> Result<(), ClientError> {
        if self.proven.get().is_some() {
            return Ok(());
        }
        let mut nonce = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut nonce);
        let unproven = || ClientError::Unproven {
            addr: self.base.trim_start_matches("http://").to_string(),
        };
        let r = self.check(
            self.agent
                .request("POST", &format!("{}{}", self.base, crate::api::PROVE_PATH))
                .send_json(types::ProveIn {
                    nonce: hex::encode(nonce),
                }),
        );
        let answer: types::ProveOut = match r {
            Ok(resp) => Self::json(resp).map_err(|_| unproven())?,
            Err(ClientError::Api { .. }) => return Err(unproven()),
            Err(e) => return Err(e),
        };
        let port = self
            .base
            .rsplit(':')
            .next()
            .and_then(|p| p.parse::<u16>().ok())
            .unwrap_or(0);
        let want = crate::api_proof::proof(&self.token, port, &nonce);
        let got = hex::decode(answer.proof.trim()).unwrap_or_default();
        let ok: bool = subtle::ConstantTimeEq::ct_eq(got.as_slice(), want.as_slice()).into();
        if !ok {
            return Err(unproven());
        }
        let _ = self.proven.set(());
        Ok(())
    }

    fn check(&self, r: Result<ureq::Response, ureq::Error>) -> Result<ureq::Response, ClientError> {
        match r {
            Ok(resp) => Ok(resp),
            Err(ureq::Error::Status(status, resp)) => {
                let text = resp.into_string().unwrap_or_default();
                Err(match serde_json::from_str::<types::ErrorBody>(&text) {
                    Ok(b) => ClientError::Api {
                        status,
                        code: b.error.code,
                        message: b.error.message,
                    },
                    Err(_) => ClientError::Api {
                        status,
                        code: format!("http_{status}"),
                        message: text.chars().take(300).collect(),
                    },
                })
            }
            Err(ureq::Error::Transport(t)) => {
                if t.kind() == ureq::ErrorKind::ConnectionFailed {
                    if let Some(d) = &self.data_dir {
                        return Err(ClientError::NotRunning(d.clone()));
                    }
                }
                Err(ClientError::Unreachable {
                    addr: self.base.clone(),
                    reason: t.to_string(),
                })
            }
        }
    }

    fn json<T: DeserializeOwned>(resp: ureq::Response) -> Result<T, ClientError> {
        resp.into_json()
            .map_err(|e| ClientError::Decode(e.to_string()))
    }

    fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let r = self.check(self.req("GET", path)?.call())?;
        Self::json(r)
    }

    fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let r = self.check(self.req("POST", path)?.send_json(body))?;
        Self::json(r)
    }

    fn post_empty<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let r = self.check(
            self.req("POST", path)?
                .set("Content-Type", "application/json")
                .send_string("{}"),
        )?;
        Self::json(r)
    }

    /// `GET /v1/id`
    pub fn id(&self) -> Result<types::IdInfo, ClientError> {
        self.get("/v1/id")
    }

    /// `GET /v1/universes`
    pub fn universes(&self) -> Result<Vec<types::Universe>, ClientError> {
        self.get("/v1/universes")
    }

    /// `POST /v1/universes`; returns the new universe's id (hex).
    pub fn create_universe(
        &self,
        name: &str,
        members: &[String],
        profile: Option<&str>,
        admins: Option<&[String]>,
    ) -> Result<String, ClientError> {
        self.create_federated_universe(name, members, profile, admins, &[], None)
    }

    /// `POST /v1/universes` with trust anchors (domain, PEM) and the
    /// accepted ciphersuites (None: 0x0001 only).
    pub fn create_federated_universe(
        &self,
        name: &str,
        members: &[String],
        profile: Option<&str>,
        admins: Option<&[String]>,
        anchors: &[types::AnchorIn],
        ciphersuites: Option<&[u16]>,
    ) -> Result<String, ClientError> {
        let body = types::CreateUniverse {
            name: name.to_string(),
            members: members.to_vec(),
            profile: profile.map(str::to_string),
            admins: admins.map(<[String]>::to_vec),
            anchors: anchors.to_vec(),
            ciphersuites: ciphersuites.map(<[u16]>::to_vec),
            users: vec![],
        };
        self.create_universe_from(&body)
    }

    /// `POST /v1/universes` with every field (e.g. `users`).
    pub fn create_universe_from(
        &self,
        body: &types::CreateUniverse,
    ) -> Result<String, ClientError> {
        let c: types::Created = self.post("/v1/universes", body)?;
        Ok(c.id)
    }

    /// `GET /v1/devices`
    pub fn devices(&self) -> Result<types::Devices, ClientError> {
        self.get("/v1/devices")
    }

    /// `POST /v1/devices/link`: `user_key` is a key file's text.
    pub fn link_device(&self, user_key: Option<&str>) -> Result<types::Devices, ClientError> {
        let body = types::LinkDevice {
            user_key: user_key.map(|k| k.trim().to_string()),
        };
        self.post("/v1/devices/link", &body)
    }

    /// `POST /v1/devices/unlink`
    pub fn unlink_device(&self, device: &str) -> Result<types::Devices, ClientError> {
        let body = types::UnlinkDevice {
            device: device.to_string(),
        };
        self.post("/v1/devices/unlink", &body)
    }

    /// `GET /v1/universes/{id}`
    pub fn universe(&self, id: &str) -> Result<types::Universe, ClientError> {
        self.get(&format!("/v1/universes/{}", enc(id)))
    }

    /// `POST /v1/identity/certificate`: renew this node's certificate.
    pub fn renew_certificate(&self, pem: &str) -> Result<(), ClientError> {
        let body = types::RenewCertificate {
            pem: pem.to_string(),
        };
        let _: types::Ok = self.post("/v1/identity/certificate", &body)?;
        Ok(())
    }

    /// `POST /v1/universes/{id}/anchors` (admins): add a domain or replace
    /// its anchor.
    pub fn set_anchor(&self, id: &str, anchor: &types::AnchorIn) -> Result<(), ClientError> {
        let _: types::Ok = self.post(&format!("/v1/universes/{}/anchors", enc(id)), anchor)?;
        Ok(())
    }

    /// `POST /v1/universes/{id}/members`
    pub fn add_member(&self, id: &str, member: &str) -> Result<(), ClientError> {
        let body = types::AddMember {
            member: member.to_string(),
        };
        let _: types::Ok = self.post(&format!("/v1/universes/{}/members", enc(id)), &body)?;
        Ok(())
    }

    /// `DELETE /v1/universes/{id}/members/{member}`
    pub fn remove_member(&self, id: &str, member: &str) -> Result<(), ClientError> {
        let path = format!("/v1/universes/{}/members/{}", enc(id), enc(member));
        let r = self.check(self.req("DELETE", &path)?.call())?;
        let _: types::Ok = Self::json(r)?;
        Ok(())
    }

    /// `POST /v1/universes/{id}/messages`; returns the message's seq.
    pub fn send(&self, id: &str, text: &str) -> Result<u64, ClientError> {
        let body = types::SendText {
            text: text.to_string(),
        };
        let s: types::Sent = self.post(&format!("/v1/universes/{}/messages", enc(id)), &body)?;
        Ok(s.seq)
    }

    /// `GET /v1/universes/{id}/messages?after=&limit=`
    pub fn messages(
        &self,
        id: &str,
        after: Option<u64>,
        limit: Option<usize>,
    ) -> Result<Vec<types::Message>, ClientError> {
        let mut q = vec![];
        if let Some(a) = after {
            q.push(format!("after={a}"));
        }
        if let Some(l) = limit {
            q.push(format!("limit={l}"));
        }
        let qs = if q.is_empty() {
            String::new()
        } else {
            format!("?{}", q.join("&"))
        };
        self.get(&format!("/v1/universes/{}/messages{qs}", enc(id)))
    }

    /// `GET /v1/universes/{id}/stream`: a blocking iterator over the
    /// universe's events (ends when the node stops).
    pub fn stream(&self, id: &str) -> Result<EventStream, ClientError> {
        // No read timeout: the stream idles between events (the server sends
        // keep-alive comments).
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(5))
            .build();
        let r = agent
            .get(&format!("{}/v1/universes/{}/stream", self.base, enc(id)))
            .set("Authorization", &format!("Bearer {}", self.token))
            .set("Accept", "text/event-stream")
            .call();
        let resp = self.check(r)?;
        Ok(EventStream {
            reader: BufReader::new(resp.into_reader()),
        })
    }

    /// `GET /v1/universes/{id}/conversation?limit=`: ours and others' texts.
    pub fn conversation(
        &self,
        id: &str,
        limit: Option<usize>,
    ) -> Result<Vec<types::ConversationEntry>, ClientError> {
        let qs = limit.map(|l| format!("?limit={l}")).unwrap_or_default();
        self.get(&format!("/v1/universes/{}/conversation{qs}", enc(id)))
    }

    /// `GET /v1/universes/{id}/members`
    pub fn members(&self, id: &str) -> Result<Vec<types::MemberView>, ClientError> {
        self.get(&format!("/v1/universes/{}/members", enc(id)))
    }

    /// `GET /v1/contacts`
    pub fn contacts(&self) -> Result<Vec<types::Contact>, ClientError> {
        self.get("/v1/contacts")
    }

    /// `PUT /v1/contacts/{member}` (a nickname) or `DELETE` (None).
    pub fn set_nickname(&self, member: &str, name: Option<&str>) -> Result<(), ClientError> {
        let path = format!("/v1/contacts/{}", enc(member));
        let r = match name {
            Some(n) => self.check(self.req("PUT", &path)?.send_json(types::SetNickname {
                name: Some(n.to_string()),
            })),
            None => self.check(self.req("DELETE", &path)?.call()),
        }?;
        let _: types::Ok = Self::json(r)?;
        Ok(())
    }

    /// `POST /v1/web/login`: a one-time login link for the web app.
    pub fn web_login(&self) -> Result<types::LoginLink, ClientError> {
        self.post_empty("/v1/web/login")
    }

    /// `POST /v1/universes/{id}/update`
    pub fn update(&self, id: &str) -> Result<(), ClientError> {
        let _: types::Ok = self.post_empty(&format!("/v1/universes/{}/update", enc(id)))?;
        Ok(())
    }

    /// `POST /v1/universes/{id}/rejoin`
    pub fn rejoin(&self, id: &str) -> Result<(), ClientError> {
        let _: types::Ok = self.post_empty(&format!("/v1/universes/{}/rejoin", enc(id)))?;
        Ok(())
    }

    /// `POST /v1/universes/{id}/leave`
    pub fn leave(&self, id: &str) -> Result<(), ClientError> {
        let _: types::Ok = self.post_empty(&format!("/v1/universes/{}/leave", enc(id)))?;
        Ok(())
    }

    /// `POST /v1/universes/{id}/forget`
    pub fn forget(&self, id: &str) -> Result<(), ClientError> {
        let _: types::Ok = self.post_empty(&format!("/v1/universes/{}/forget", enc(id)))?;
        Ok(())
    }

    /// `GET /v1/universes/{id}/bundle[?since_peer=]`, or
    /// `GET /v1/bundles/introduction` when `id` is None: the bundle file's
    /// bytes and how many send groups `since_peer`'s position was known in.
    pub fn bundle_export(
        &self,
        id: Option<&str>,
        since_peer: Option<&str>,
    ) -> Result<(Vec<u8>, usize), ClientError> {
        let path = match (id, since_peer) {
            (None, _) => "/v1/bundles/introduction".to_string(),
            (Some(u), None) => format!("/v1/universes/{}/bundle", enc(u)),
            (Some(u), Some(m)) => format!("/v1/universes/{}/bundle?since_peer={}", enc(u), enc(m)),
        };
        let r = self.check(self.req("GET", &path)?.call())?;
        let known = r
            .header(crate::api::KNOWN_GROUPS_HEADER)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut bytes = vec![];
        r.into_reader()
            .take(mmls_core::bundle::MAX_BUNDLE_BYTES as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| ClientError::Decode(e.to_string()))?;
        Ok((bytes, known))
    }

    /// `POST /v1/bundles`: feeds a bundle file to the node.
    pub fn bundle_import(&self, bytes: &[u8]) -> Result<types::BundleImported, ClientError> {
        let r = self.check(
            self.req("POST", "/v1/bundles")?
                .set("Content-Type", "application/octet-stream")
                .send_bytes(bytes),
        )?;
        Self::json(r)
    }

    /// `GET /v1/status`
    pub fn status(&self) -> Result<types::Status, ClientError> {
        self.get("/v1/status")
    }

    /// `GET /v1/peers`
    pub fn peers(&self) -> Result<Vec<types::Peer>, ClientError> {
        self.get("/v1/peers")
    }

    /// `GET /v1/openapi.json`
    pub fn openapi(&self) -> Result<serde_json::Value, ClientError> {
        self.get("/v1/openapi.json")
    }

    /// `POST /v1/shutdown`
    pub fn shutdown(&self) -> Result<(), ClientError> {
        let _: types::Ok = self.post_empty("/v1/shutdown")?;
        Ok(())
    }
}

/// Path segments are ids (hex, base58): anything else is percent-encoded so
/// a bad id reaches the server (and gets its 400) instead of a wrong route.
fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Server-Sent Events of one universe, parsed into [`StreamEvent`]s.
pub struct EventStream {
    reader: BufReader<Box<dyn Read + Send + Sync + 'static>>,
}

impl Iterator for EventStream {
    type Item = Result<StreamEvent, ClientError>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut data = String::new();
        loop {
            let mut line = String::new();
            match self.reader.read_line(&mut line) {
                Ok(0) => return None,
                Ok(_) => {}
                Err(e) => return Some(Err(ClientError::Decode(e.to_string()))),
            }
            let line = line.trim_end_matches(['\r', '\n']);
            if line.is_empty() {
                if data.is_empty() {
                    continue;
                }
                return Some(
                    serde_json::from_str(&data).map_err(|e| ClientError::Decode(e.to_string())),
                );
            }
            if let Some(d) = line.strip_prefix("data:") {
                if !data.is_empty() {
                    data.push('\n');
                }
                data.push_str(d.strip_prefix(' ').unwrap_or(d));
            }
            // "event:", "id:", "retry:" and ": comments" carry nothing we need.
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_parsing() {
        let text = ": keep-alive\n\nevent: lagged\ndata: {\"type\":\"lagged\",\"missed\":3}\n\n";
        let reader: Box<dyn Read + Send + Sync> =
            Box::new(std::io::Cursor::new(text.as_bytes().to_vec()));
        let mut s = EventStream {
            reader: BufReader::new(reader),
        };
        assert_eq!(
            s.next().unwrap().unwrap(),
            StreamEvent::Lagged { missed: 3 }
        );
        assert!(s.next().is_none());
    }

    #[test]
    fn not_running_is_typed() {
        let d = tempfile::tempdir().unwrap();
        let e = Client::from_data_dir(d.path()).unwrap_err();
        assert!(matches!(e, ClientError::NotRunning(_)));
        assert!(e.to_string().contains("node is not running"), "{e}");
    }

    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(enc("ab12"), "ab12");
        assert_eq!(enc("a/b c"), "a%2Fb%20c");
    }
}
