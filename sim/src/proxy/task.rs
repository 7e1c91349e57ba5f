//! The tokio side of the proxy: the accept loop and one task per connection.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, watch};
use tokio::task::JoinSet;

use super::pipe::{Pipe, forward_reads, forward_writes};
use super::shared::Shared;
use super::stamped;
use crate::limits::{ACCEPT_ERROR_BACKOFF, SHUTDOWN_GRACE, UPSTREAM_CONNECT_TIMEOUT};
use crate::settings::Dir;

/// Accepts connections until `shutdown` turns true (or its sender is dropped), then resets
/// every connection and waits for their tasks.
pub(crate) async fn accept_loop(shared: Arc<Shared>, listener: TcpListener, mut shutdown: watch::Receiver<bool>) {
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            // The guard `wait_for` returns is not `Send`: drop it inside the branch future.
            _ = async { drop(shutdown.wait_for(|stop| *stop).await) } => break,
            Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                match joined {
                    Err(e) if e.is_panic() => tracing::error!("connection task panicked: {e}"),
                    _ => {}
                }
            }
            accepted = accept_with_slot(&listener, &shared) => match accepted {
                Ok((stream, peer, slot)) => {
                    tasks.spawn(handle_connection(shared.clone(), stream, peer, slot));
                }
                Err(e) => {
                    tracing::warn!("failed to accept a connection: {e}");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                }
            },
        }
    }
    drop(listener);
    shared.close();
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async { while tasks.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!("connection tasks still running {SHUTDOWN_GRACE:?} after shutdown; aborting");
        tasks.shutdown().await;
    }
}

/// Waits for a connection slot, then accepts.
async fn accept_with_slot(listener: &TcpListener, shared: &Shared) -> std::io::Result<(TcpStream, SocketAddr, OwnedSemaphorePermit)> {
    let slot = shared.conn_slots.clone().acquire_owned().await.map_err(|_| std::io::Error::other("connection semaphore closed"))?;
    let (stream, peer) = listener.accept().await?;
    Ok((stream, peer, slot))
}

/// Ends a connection with a TCP reset rather than a FIN.
fn reset(stream: TcpStream) {
    // If SO_LINGER cannot be set the close degrades to a FIN, which peers also notice.
    let _ = stream.set_zero_linger();
    drop(stream);
}

enum Outcome {
    /// Both directions reached end of stream and were delivered.
    Closed,
    /// Reset on purpose (`/reset`, a reset partition, shutdown).
    Killed,
    /// A socket failed (usually: one end reset or vanished).
    Failed(std::io::Error),
}

async fn handle_connection(shared: Arc<Shared>, client: TcpStream, peer: SocketAddr, _slot: OwnedSemaphorePermit) {
    if shared.refuses_connections() {
        tracing::debug!(%peer, "refused a connection during a reset partition");
        shared.count_refused();
        reset(client);
        return;
    }
    // The proxy must not add Nagle delays of its own; the endpoints keep their settings.
    let _ = client.set_nodelay(true);
    let upstream = match tokio::time::timeout(UPSTREAM_CONNECT_TIMEOUT, TcpStream::connect(shared.upstream)).await {
        Ok(Ok(upstream)) => upstream,
        Ok(Err(e)) => {
            tracing::info!(%peer, upstream = %shared.upstream, "failed to connect upstream: {e}");
            shared.count_failed();
            reset(client);
            return;
        }
        Err(_) => {
            tracing::info!(%peer, upstream = %shared.upstream, "upstream connect timed out");
            shared.count_failed();
            reset(client);
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    for (stream, side) in [(&client, "client"), (&upstream, "upstream")] {
        if let Err(e) = stamped::enable(stream) {
            tracing::debug!(conn = %peer, "no receive timestamps on the {side} side ({e}): its delays count from each read");
        }
    }

    let pipes = [Arc::new(Pipe::new(Dir::Ab)), Arc::new(Pipe::new(Dir::Ba))];
    let (kill_tx, kill_rx) = watch::channel(false);
    let Some(id) = shared.register(pipes.clone(), kill_tx) else {
        shared.count_refused();
        reset(client);
        reset(upstream);
        return;
    };
    tracing::debug!(conn = id, %peer, "connection opened");

    let (mut client, mut upstream) = (client, upstream);
    let outcome = run_connection(&shared, &mut client, &mut upstream, &pipes, kill_rx).await;
    match outcome {
        Outcome::Closed => tracing::debug!(conn = id, "connection closed"),
        Outcome::Killed => {
            tracing::debug!(conn = id, "connection reset");
            reset(client);
            reset(upstream);
        }
        Outcome::Failed(e) => {
            // Propagate the failure to the other end as a reset, as a broken path would.
            tracing::debug!(conn = id, "connection failed: {e}");
            reset(client);
            reset(upstream);
        }
    }
    for pipe in &pipes {
        pipe.discard(shared.dir(pipe.dir()));
    }
    shared.deregister(id);
}

async fn run_connection(
    shared: &Shared,
    client: &mut TcpStream,
    upstream: &mut TcpStream,
    pipes: &[Arc<Pipe>; 2],
    mut kill: watch::Receiver<bool>,
) -> Outcome {
    let (client_rx, mut client_tx) = client.split();
    let (upstream_rx, mut upstream_tx) = upstream.split();
    let [ab, ba] = pipes;
    let ab = async { tokio::try_join!(forward_reads(client_rx.as_ref(), ab, shared), forward_writes(&mut upstream_tx, ab, shared),) };
    let ba = async { tokio::try_join!(forward_reads(upstream_rx.as_ref(), ba, shared), forward_writes(&mut client_tx, ba, shared),) };
    tokio::select! {
        result = async { tokio::try_join!(ab, ba) } => match result {
            Ok(_) => Outcome::Closed,
            Err(e) => Outcome::Failed(e),
        },
        // A dropped sender (shutdown) counts as a kill too.
        _ = async { drop(kill.wait_for(|killed| *killed).await) } => Outcome::Killed,
    }
}
