//! The cluster as this node sees it, for operators: which nodes are members, whether NATS is
//! reachable, which rooms this node holds and what it refused.

use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;

use super::{Admin, ApiError, ApiState, ErrorBody};
use crate::cluster::NodeInfo;

#[derive(Debug, Serialize, ToSchema)]
pub struct ClusterView {
    /// Whether this server runs in a cluster (`--cluster`); the other fields are empty when
    /// not.
    pub clustered: bool,
    /// This node's id.
    pub node: Option<String>,
    /// Whether this node's connection to NATS is up.
    pub connected: bool,
    /// The members whose lease is current, this node first.
    pub nodes: Vec<NodeInfo>,
    /// The rooms whose record names this node.
    pub rooms_held: usize,
    /// Cluster messages refused since the start, by reason.
    pub rejected: Vec<Refused>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Refused {
    pub reason: String,
    pub count: u64,
}

/// The cluster as this node sees it (administrators only).
#[utoipa::path(get, path = "/api/cluster", operation_id = "get_cluster", tag = "cluster", security(("bearer" = [])),
    responses((status = 200, body = ClusterView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub(super) async fn view(
    State(state): State<ApiState>,
    _admin: Admin,
) -> Result<axum::Json<ClusterView>, ApiError> {
    let Some(cluster) = &state.cluster else {
        return Ok(axum::Json(ClusterView {
            clustered: false,
            node: None,
            connected: false,
            nodes: Vec::new(),
            rooms_held: 0,
            rejected: Vec::new(),
        }));
    };
    let snapshot = cluster.snapshot();
    Ok(axum::Json(ClusterView {
        clustered: true,
        node: Some(cluster.node_id().to_string()),
        connected: snapshot.connected,
        nodes: cluster.nodes(),
        rooms_held: cluster.rooms_held(),
        rejected: snapshot
            .rejected
            .into_iter()
            .map(|(reason, count)| Refused {
                reason: reason.to_string(),
                count,
            })
            .collect(),
    }))
}
