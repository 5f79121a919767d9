//! A small client of the node's HTTP API, for the CLI's `status` and `tx send`.

use std::time::Duration;

use anyhow::{Context, bail};
use chainmesh_proto::{Address, Hash, Tx};

use crate::chain::NodeStatus;
use serde::Deserialize;
use serde::de::DeserializeOwned;

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
}

#[derive(Debug, Deserialize)]
pub struct AccountInfo {
    pub balance: u64,
    pub nonce: u64,
    pub next_nonce: u64,
}

#[derive(Debug, Deserialize)]
pub struct TxInfo {
    pub status: String,
    pub block: Option<Hash>,
    pub height: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct Submitted {
    id: Hash,
}

#[derive(Debug, Deserialize)]
struct ErrorBody {
    error: String,
    message: String,
}

impl Client {
    pub fn new(base: &str) -> anyhow::Result<Client> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .build()?;
        Ok(Client {
            http,
            base: base.trim_end_matches('/').to_string(),
        })
    }

    async fn decode<T: DeserializeOwned>(
        &self,
        what: &str,
        r: reqwest::Response,
    ) -> anyhow::Result<T> {
        let status = r.status();
        let body = r.bytes().await?;
        if status.is_success() {
            return serde_json::from_slice(&body)
                .with_context(|| format!("unexpected answer to {what} from {}", self.base));
        }
        match serde_json::from_slice::<ErrorBody>(&body) {
            Ok(e) => bail!(
                "{what}: the node answered {status} ({}): {}",
                e.error,
                e.message
            ),
            Err(_) => bail!("{what}: the node answered {status}"),
        }
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let url = format!("{}{path}", self.base);
        let r = self.http.get(&url).send().await.with_context(|| {
            format!(
                "cannot reach the node API at {} (is the node running?)",
                self.base
            )
        })?;
        self.decode(&format!("GET {path}"), r).await
    }

    pub async fn status(&self) -> anyhow::Result<NodeStatus> {
        self.get("/status").await
    }

    pub async fn peers(&self) -> anyhow::Result<Vec<crate::p2p::PeerView>> {
        self.get("/peers").await
    }

    pub async fn account(&self, a: &Address) -> anyhow::Result<AccountInfo> {
        self.get(&format!("/accounts/{a}")).await
    }

    /// A block by height: its header fields, hash and transactions (ids), as JSON.
    pub async fn block(&self, height: u64) -> anyhow::Result<serde_json::Value> {
        self.get(&format!("/blocks/{height}")).await
    }

    pub async fn tx(&self, id: &Hash) -> anyhow::Result<TxInfo> {
        self.get(&format!("/txs/{id}")).await
    }

    pub async fn submit(&self, tx: &Tx) -> anyhow::Result<Hash> {
        let r = self
            .http
            .post(format!("{}/txs", self.base))
            .json(tx)
            .send()
            .await
            .with_context(|| format!("cannot reach the node API at {}", self.base))?;
        let s: Submitted = self.decode("POST /txs", r).await?;
        Ok(s.id)
    }
}
