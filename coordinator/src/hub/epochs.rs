//! The epoch writer: persists the epochs the core asks for, off the state lock and off
//! the runtime's workers, and tells the core when they are durable.
//!
//! Every commit waits for an fsync, so requests are batched: whatever queued while the
//! previous commit ran goes into the next one (a storm of promotions costs one fsync, not
//! one each). A failed write is retried; the messages that carry those epochs stay held
//! by the core meanwhile, so agents never hear an epoch the store may forget.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use meshgate_proto::Id;
use tokio::sync::mpsc;

use super::Hub;
use crate::core::Input;

/// Pause before asking again after a failed write.
const RETRY_AFTER: Duration = Duration::from_millis(100);

/// Merges requests into one write: the highest epoch per node.
pub(super) fn merge(batches: impl IntoIterator<Item = Vec<(Id, u64)>>) -> Vec<(Id, u64)> {
    let mut max = BTreeMap::new();
    for (node, epoch) in batches.into_iter().flatten() {
        let e = max.entry(node).or_insert(epoch);
        *e = (*e).max(epoch);
    }
    max.into_iter().collect()
}

/// Runs until the hub goes away.
pub(super) async fn writer(hub: Arc<Hub>, mut rx: mpsc::UnboundedReceiver<Vec<(Id, u64)>>) {
    while let Some(first) = rx.recv().await {
        let mut batches = vec![first];
        while let Ok(more) = rx.try_recv() {
            batches.push(more);
        }
        let epochs = merge(batches);
        let h = hub.clone();
        let todo = epochs.clone();
        let result = tokio::task::spawn_blocking(move || h.registry.set_epochs(&todo)).await;
        match result {
            Ok(Ok(())) => hub.input(Input::EpochsDurable(epochs)),
            Ok(Err(e)) => {
                tracing::error!(?epochs, error = %e, "failed to persist epochs; retrying");
                tokio::time::sleep(RETRY_AFTER).await;
                hub.input(Input::EpochsFailed(epochs));
            }
            Err(e) => {
                tracing::error!(?epochs, error = %e, "epoch write panicked; retrying");
                tokio::time::sleep(RETRY_AFTER).await;
                hub.input(Input::EpochsFailed(epochs));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_keeps_the_highest_epoch_per_node() {
        let (a, b) = (Id([1; 16]), Id([2; 16]));
        let m = merge([vec![(a, 3), (b, 1)], vec![(a, 5)], vec![(a, 4)]]);
        assert_eq!(m, vec![(a, 5), (b, 1)]);
    }
}
