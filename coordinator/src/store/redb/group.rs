//! Group commit: concurrent transactions share one redb commit, so one fsync.
//!
//! A caller queues its transaction. The first caller that finds no commit under way
//! becomes the leader: it takes the whole queue, applies the transactions in arrival
//! order in one write transaction (each with its own revision and guards, each seeing
//! the ones before it), commits once, and hands every caller its own result. Callers
//! that arrive meanwhile queue for the next leader. A lone caller commits alone, as
//! before; a burst of registrations costs about one fsync per batch instead of one each.
//! Nobody is answered before the commit that holds their write returned.

use std::collections::HashMap;
use std::sync::{Condvar, Mutex, MutexGuard};

use crate::store::{Compare, Op, StoreError};

/// One caller's transaction.
pub(super) struct Job {
    pub compares: Vec<Compare>,
    pub ops: Vec<Op>,
}

/// One transaction's result: its revision, `None` when a compare failed.
pub(super) type Outcome = Result<Option<u64>, StoreError>;

#[derive(Default)]
struct State {
    queue: Vec<(u64, Job)>,
    results: HashMap<u64, Outcome>,
    next_ticket: u64,
    leading: bool,
    commits: u64,
}

/// The queue and its leader.
#[derive(Default)]
pub(super) struct Group {
    state: Mutex<State>,
    done: Condvar,
}

impl Group {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `job` in the next batch; `commit` applies a batch and returns one outcome
    /// per job, in order.
    pub(super) fn submit(&self, job: Job, commit: impl Fn(&[Job]) -> Vec<Outcome>) -> Outcome {
        let mut st = self.lock();
        let ticket = st.next_ticket;
        st.next_ticket += 1;
        st.queue.push((ticket, job));
        loop {
            if let Some(outcome) = st.results.remove(&ticket) {
                return outcome;
            }
            if st.leading {
                st = self.done.wait(st).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            st.leading = true;
            let batch = std::mem::take(&mut st.queue);
            drop(st);
            let lead = Lead {
                group: self,
                tickets: batch.iter().map(|(t, _)| *t).collect(),
            };
            let jobs: Vec<Job> = batch.into_iter().map(|(_, j)| j).collect();
            let outcomes = commit(&jobs);
            st = lead.finish(outcomes);
        }
    }

    /// Commits made so far (a batch that changed nothing makes none).
    #[cfg(test)]
    pub(super) fn commits(&self) -> u64 {
        self.lock().commits
    }

    pub(super) fn count_commit(&self) {
        self.lock().commits += 1;
    }
}

/// The leader's duty to answer its batch and step down, even if the commit panicked.
struct Lead<'a> {
    group: &'a Group,
    tickets: Vec<u64>,
}

impl<'a> Lead<'a> {
    fn finish(mut self, outcomes: Vec<Outcome>) -> MutexGuard<'a, State> {
        let mut st = self.group.lock();
        for (ticket, outcome) in std::mem::take(&mut self.tickets).into_iter().zip(outcomes) {
            st.results.insert(ticket, outcome);
        }
        st.leading = false;
        self.group.done.notify_all();
        st
    }
}

impl Drop for Lead<'_> {
    fn drop(&mut self) {
        if self.tickets.is_empty() {
            return;
        }
        let mut st = self.group.lock();
        for ticket in self.tickets.drain(..) {
            st.results.insert(
                ticket,
                Err(StoreError::Backend(
                    "the commit of this batch failed".into(),
                )),
            );
        }
        st.leading = false;
        self.group.done.notify_all();
    }
}
