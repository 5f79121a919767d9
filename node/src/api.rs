//! The HTTP JSON API (axum).
//!
//! Reads go straight to the store (sled serves them concurrently with the chain task).
//! A submitted transaction goes straight into the shared mempool, as peers' do, and is
//! answered once a flush covers it (group commit, [`crate::flush`]): it does not wait
//! behind a block import in the chain task. Other changes and look-ups go through the
//! chain task's bounded command queue. Every
//! failure is a JSON body `{"error": <code>, "message": <what went wrong>}` with a 4xx or
//! 5xx status; nothing a client sends can make a handler panic.

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chainmesh_chain_sync::store::StoreReader;
use chainmesh_mempool::AddError;
use chainmesh_proto::{Address, Block, Hash, Tx};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::{mpsc, oneshot, watch};

use crate::chain::{Command, NodeStatus, SubmitError};
use crate::p2p::{DhtView, NetCommand, NetStats, PeerView, SyncView};

/// Transaction submissions being checked or waiting for their flush, at most; beyond
/// it the API answers `busy`.
pub const MAX_SUBMISSIONS: usize = 256;

#[derive(Clone)]
pub struct ApiState {
    pub commands: mpsc::Sender<Command>,
    /// Answers to submissions wait for it.
    pub flusher: crate::flush::Flusher,
    /// Accepted transactions are announced to peers through it (dropped if full).
    pub events: mpsc::Sender<crate::chain::ChainEvent>,
    /// Permits for [`MAX_SUBMISSIONS`].
    pub submissions: std::sync::Arc<tokio::sync::Semaphore>,
    pub status: watch::Receiver<NodeStatus>,
    pub reader: StoreReader,
    pub timeout: Duration,
    pub net: mpsc::Sender<NetCommand>,
    pub sync: watch::Receiver<SyncView>,
    /// Prometheus registry (libp2p's metrics so far).
    pub metrics: std::sync::Arc<prometheus_client::registry::Registry>,
    /// The mempool, read for its size: peers' transactions enter it outside the chain
    /// task, which publishes the rest of the status.
    pub pool: crate::pool::SharedPool,
    /// The last minutes, for the dashboard's charts.
    pub history: crate::history::History,
    /// Signatures of submitted blocks are checked against it.
    pub genesis_hash: Hash,
}

pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
    fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    fn internal(e: impl std::fmt::Display) -> Self {
        tracing::error!(error = %e, "API request failed");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
    }
    fn busy() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            "the node is busy; retry shortly",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({"error": self.code, "message": self.message})),
        )
            .into_response()
    }
}

impl From<SubmitError> for ApiError {
    fn from(e: SubmitError) -> Self {
        let msg = e.to_string();
        match e {
            SubmitError::Storage(_) => Self::internal(msg),
            SubmitError::Rejected(r) => {
                let status = match r {
                    AddError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
                    AddError::AlreadyKnown | AddError::ReplacementUnderpriced { .. } => {
                        StatusCode::CONFLICT
                    }
                    AddError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
                    AddError::SenderFull { .. } => StatusCode::TOO_MANY_REQUESTS,
                    AddError::PoolFull { .. } => StatusCode::SERVICE_UNAVAILABLE,
                    AddError::State(_) => return Self::internal(msg),
                };
                let code = r.code();
                Self::new(status, code, msg)
            }
        }
    }
}

type ApiResult<T> = Result<Json<T>, ApiError>;

/// `max_body` bounds every request body but a submitted block's, which may be as large
/// as a block: `max_block_bytes` in binary, about three times that in JSON.
pub fn router(state: ApiState, max_body: usize, max_block_bytes: u64) -> Router {
    let block_body = usize::try_from(max_block_bytes)
        .unwrap_or(usize::MAX)
        .saturating_mul(4)
        .saturating_add(64 * 1024);
    Router::new()
        .route("/", get(dashboard))
        .route("/history", get(history))
        .route("/status", get(status))
        .route("/peers", get(peers))
        .route("/net", get(net_stats))
        .route("/net/dht", get(dht))
        .route("/metrics", get(metrics))
        .route("/blocks/{id}", get(block))
        .route(
            "/blocks",
            axum::routing::post(submit_block).layer(DefaultBodyLimit::max(block_body)),
        )
        .route("/accounts/{address}", get(account))
        .route("/txs", axum::routing::post(submit_tx))
        .route("/txs/{id}", get(tx))
        .route("/mina/publish", axum::routing::post(mina_publish))
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}

/// Sends a command to the chain task and waits for its answer, within the timeout.
async fn ask<T>(
    st: &ApiState,
    make: impl FnOnce(oneshot::Sender<T>) -> Command,
) -> Result<T, ApiError> {
    let (tx, rx) = oneshot::channel();
    st.commands
        .try_send(make(tx))
        .map_err(|_| ApiError::busy())?;
    match tokio::time::timeout(st.timeout, rx).await {
        Ok(Ok(v)) => Ok(v),
        _ => Err(ApiError::busy()),
    }
}

async fn status(State(st): State<ApiState>) -> Json<NodeStatus> {
    let mut s = st.status.borrow().clone();
    s.sync = st.sync.borrow().clone();
    let pool = st.pool.gauges();
    (s.mempool_txs, s.mempool_bytes, s.pool_head) = (pool.txs, pool.bytes, pool.log_head);
    Json(s)
}

/// Asks the network task (a bounded queue: busy rather than waiting when it is full).
async fn ask_net<T>(
    st: &ApiState,
    command: impl FnOnce(oneshot::Sender<T>) -> NetCommand,
) -> Result<T, ApiError> {
    let (reply, rx) = oneshot::channel();
    st.net
        .try_send(command(reply))
        .map_err(|_| ApiError::busy())?;
    match tokio::time::timeout(st.timeout, rx).await {
        Ok(Ok(v)) => Ok(v),
        _ => Err(ApiError::busy()),
    }
}

async fn peers(State(st): State<ApiState>) -> ApiResult<Vec<PeerView>> {
    let mut v = ask_net(&st, NetCommand::Peers).await?;
    v.sort_by(|a, b| a.peer_id.cmp(&b.peer_id));
    Ok(Json(v))
}

/// The dashboard: one static page that reads the API from the browser.
async fn dashboard() -> impl IntoResponse {
    (
        [
            (axum::http::header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (axum::http::header::CACHE_CONTROL, "no-cache"),
            // The page loads nothing from elsewhere, and may not.
            (
                axum::http::header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; connect-src 'self'; script-src 'unsafe-inline'; \
                 style-src 'unsafe-inline'",
            ),
        ],
        include_str!("dashboard.html"),
    )
}

async fn history(State(st): State<ApiState>) -> Json<Vec<crate::history::Sample>> {
    Json(st.history.samples())
}

/// Prometheus text exposition format.
async fn metrics(
    State(st): State<ApiState>,
) -> Result<impl axum::response::IntoResponse, ApiError> {
    let mut body = String::new();
    prometheus_client::encoding::text::encode(&mut body, &st.metrics)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    ))
}

async fn net_stats(State(st): State<ApiState>) -> ApiResult<NetStats> {
    Ok(Json(ask_net(&st, NetCommand::Stats).await?))
}

/// The DHT routing table, bucket by bucket.
async fn dht(State(st): State<ApiState>) -> ApiResult<DhtView> {
    Ok(Json(ask_net(&st, NetCommand::Dht).await?))
}

/// The body of `POST /mina/publish`.
#[derive(Deserialize)]
pub struct MinaPublish {
    pub topic: String,
    /// The body (Bin_prot bytes, opaque to us), hex; the node adds the length prefix.
    pub data_hex: String,
}

#[derive(Serialize)]
struct Published {
    message_id: String,
}

/// Mina profile: publish an opaque body on one of Mina's gossip topics.
async fn mina_publish(
    State(st): State<ApiState>,
    body: Result<Json<MinaPublish>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<Published> {
    let Json(req) = body.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let data =
        hex::decode(&req.data_hex).map_err(|e| ApiError::bad_request(format!("data_hex: {e}")))?;
    let (reply, rx) = oneshot::channel();
    st.net
        .try_send(NetCommand::MinaPublish {
            topic: req.topic,
            body: data,
            reply,
        })
        .map_err(|_| ApiError::busy())?;
    match tokio::time::timeout(st.timeout, rx).await {
        Ok(Ok(Ok(id))) => Ok(Json(Published { message_id: id })),
        Ok(Ok(Err(why))) => Err(ApiError::bad_request(why)),
        _ => Err(ApiError::busy()),
    }
}

#[derive(Serialize)]
pub struct TxView {
    pub id: Hash,
    #[serde(flatten)]
    pub tx: Tx,
}

impl From<&Tx> for TxView {
    fn from(tx: &Tx) -> Self {
        TxView {
            id: tx.id(),
            tx: tx.clone(),
        }
    }
}

#[derive(Serialize)]
pub struct BlockView {
    pub hash: Hash,
    pub canonical: bool,
    #[serde(flatten)]
    pub header: chainmesh_proto::Header,
    pub txs: Vec<TxView>,
}

/// A block as `GET /blocks/{id}` shows it (and `POST /blocks` takes it).
pub fn block_view(b: &Block, canonical: bool) -> BlockView {
    BlockView {
        hash: b.hash(),
        canonical,
        header: b.header.clone(),
        txs: b.txs.iter().map(TxView::from).collect(),
    }
}

async fn block(State(st): State<ApiState>, Path(id): Path<String>) -> ApiResult<BlockView> {
    let found = if !id.is_empty() && id.len() <= 20 && id.bytes().all(|b| b.is_ascii_digit()) {
        let h: u64 = id
            .parse()
            .map_err(|_| ApiError::bad_request(format!("height {id} is out of range")))?;
        if h > st.status.borrow().height {
            None
        } else {
            st.reader.block_at(h).map_err(ApiError::internal)?
        }
    } else {
        let hash: Hash = id.parse().map_err(|e| {
            ApiError::bad_request(format!("block id must be a height or a block hash: {e}"))
        })?;
        st.reader.block(&hash).map_err(ApiError::internal)?
    };
    let b = found.ok_or_else(|| ApiError::not_found(format!("no block {id}")))?;
    let canonical = st.reader.is_canonical(&b).map_err(ApiError::internal)?;
    Ok(Json(block_view(&b, canonical)))
}

#[derive(Serialize)]
pub struct AccountView {
    pub address: Address,
    pub balance: u64,
    pub nonce: u64,
    /// The nonce for the account's next new transaction, counting its pending ones.
    pub next_nonce: u64,
}

async fn account(State(st): State<ApiState>, Path(addr): Path<String>) -> ApiResult<AccountView> {
    let address: Address = addr
        .parse()
        .map_err(|e| ApiError::bad_request(format!("address: {e}")))?;
    let a = st.reader.account(&address).map_err(ApiError::internal)?;
    let next_nonce = ask(&st, |reply| Command::NextNonce {
        addr: address,
        reply,
    })
    .await?;
    Ok(Json(AccountView {
        address,
        balance: a.balance,
        nonce: a.nonce,
        next_nonce,
    }))
}

#[derive(Serialize)]
pub struct TxStatus {
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub block: Option<Hash>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub height: Option<u64>,
    #[serde(flatten)]
    pub tx: TxView,
}

async fn tx(State(st): State<ApiState>, Path(id): Path<String>) -> ApiResult<TxStatus> {
    let id: Hash = id
        .parse()
        .map_err(|e| ApiError::bad_request(format!("transaction id: {e}")))?;
    if let Some(b) = st.reader.tx_block(&id).map_err(ApiError::internal)?
        && let Some(t) = b.txs.iter().find(|t| t.id() == id)
    {
        return Ok(Json(TxStatus {
            status: "included",
            block: Some(b.hash()),
            height: Some(b.header.height),
            tx: t.into(),
        }));
    }
    let pending = st.pool.read(move |p| p.get(&id).cloned()).await;
    match pending.ok_or_else(ApiError::busy)? {
        Some(t) => Ok(Json(TxStatus {
            status: "pending",
            block: None,
            height: None,
            tx: (&t).into(),
        })),
        None => Err(ApiError::not_found(format!("no transaction {id}"))),
    }
}

#[derive(Serialize)]
pub struct Submitted {
    pub id: Hash,
    pub status: &'static str,
}

/// A body that is not the JSON asked for: `413` if too large, else `400`, with axum's
/// reason.
fn bad_body(r: JsonRejection) -> ApiError {
    let status = match r.status() {
        StatusCode::PAYLOAD_TOO_LARGE => StatusCode::PAYLOAD_TOO_LARGE,
        _ => StatusCode::BAD_REQUEST,
    };
    ApiError::new(status, "bad_request", r.body_text())
}

async fn submit_tx(
    State(st): State<ApiState>,
    body: Result<Json<Tx>, JsonRejection>,
) -> Result<(StatusCode, Json<Submitted>), ApiError> {
    let Json(tx) = body.map_err(bad_body)?;
    let _permit = st
        .submissions
        .clone()
        .try_acquire_owned()
        .map_err(|_| ApiError::busy())?;
    let (pool, reader, copy) = (st.pool.clone(), st.reader.clone(), tx.clone());
    let id =
        tokio::task::spawn_blocking(move || pool.add_one(copy, &crate::pool::ReaderState(&reader)))
            .await
            .map_err(|_| ApiError::busy())??;
    // Spread at once: a transaction is the sender's, not a promise of ours, and peers
    // holding it if we crash before the flush lose nothing. The answer waits for it.
    if let Err(mpsc::error::TrySendError::Full(_)) =
        st.events.try_send(crate::chain::ChainEvent::NewTx(tx))
    {
        tracing::debug!("network busy: a transaction announcement was dropped");
    }
    match tokio::time::timeout(st.timeout, st.flusher.flush()).await {
        Ok(Ok(())) => {}
        Ok(Err(crate::flush::FlushError::Storage(e))) => {
            return Err(ApiError::from(SubmitError::Storage(e)));
        }
        Ok(Err(_)) | Err(_) => return Err(ApiError::busy()),
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(Submitted {
            id,
            status: "pending",
        }),
    ))
}

#[derive(Serialize)]
pub struct BlockSubmitted {
    pub hash: Hash,
    pub height: u64,
    /// Whether it is on our chain (a block of a fork we do not follow is stored only).
    pub canonical: bool,
}

/// A submitted block: the shape `GET /blocks/{id}` answers with (header fields and
/// `txs`; its `hash`, `canonical` and transaction `id`s are derived, so ignored).
#[derive(Deserialize)]
pub struct BlockBody {
    #[serde(flatten)]
    pub header: chainmesh_proto::Header,
    pub txs: Vec<Tx>,
}

/// A block from a client (an external producer, or a relay of its own): checked as a
/// peer's is, imported, and announced to peers if it became our tip.
async fn submit_block(
    State(st): State<ApiState>,
    body: Result<Json<BlockBody>, JsonRejection>,
) -> Result<(StatusCode, Json<BlockSubmitted>), ApiError> {
    let Json(BlockBody { header, txs }) = body.map_err(bad_body)?;
    let block = Block { header, txs };
    let _permit = st
        .submissions
        .clone()
        .try_acquire_owned()
        .map_err(|_| ApiError::busy())?;
    let (hash, height) = (block.hash(), block.header.height);
    // Signatures off the async threads: the producer's, and those of transactions our
    // pool does not hold (it verified its own on their way in, as gossip relay counts).
    let (pool, genesis) = (st.pool.clone(), st.genesis_hash);
    let block = tokio::task::spawn_blocking(move || {
        if !block.header.verify_signature() {
            return Err("the producer's signature is invalid".to_string());
        }
        let unverified: Vec<Tx> = {
            let guard = pool.lock();
            let p = guard.pool();
            block
                .txs
                .iter()
                .filter(|t| !p.contains(&t.id()))
                .cloned()
                .collect()
        };
        let ok = chainmesh_chain_sync::rules::tx_signatures(&genesis, &unverified);
        match ok.iter().position(|ok| !ok) {
            Some(i) => Err(format!(
                "transaction {} has an invalid signature",
                unverified[i].id()
            )),
            None => Ok(block),
        }
    })
    .await
    .map_err(|_| ApiError::busy())?
    .map_err(|why| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_block", why))?;
    let r = ask(&st, |reply| Command::ImportBlocks {
        blocks: vec![block],
        sigs_verified: true,
        announce: true,
        reply,
    })
    .await?;
    match r {
        chainmesh_chain_sync::sync::ImportResult::Done => {
            let canonical = st
                .reader
                .canonical_hash(height)
                .map_err(ApiError::internal)?
                == Some(hash);
            Ok((
                StatusCode::OK,
                Json(BlockSubmitted {
                    hash,
                    height,
                    canonical,
                }),
            ))
        }
        chainmesh_chain_sync::sync::ImportResult::Failed {
            invalid, reason, ..
        } => Err(if invalid {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_block", reason)
        } else {
            // Not the block's fault: an unknown parent, or our storage.
            ApiError::new(StatusCode::CONFLICT, "not_imported", reason)
        }),
    }
}

/// Binds the API listener, reporting a taken port clearly.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot listen for the API on {addr}: {e} (is another node running? choose another \
             address with --api, or port 0 for any free port)"
        )
    })
}
