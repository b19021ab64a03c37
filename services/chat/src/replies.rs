//! Telling the handoff service that the operator holding a dialog replied,
//! which stops the handoff's no-reply timer — reliably, and without making
//! the operator's `ack` wait for it.
//!
//! The send path drops each report into [`ReplyReporter`] (a map, one entry
//! per dialog, never waiting: `chatai_kit::pending`) and one task,
//! [`ReplyReporter::run`], sends them: a report the handoff service could not take (unreachable,
//! overloaded, stopping) is put back and sent again after a backoff, until
//! it is accepted — then the holder view remembers it, so later replies are
//! not reported again — or refused (the operator no longer holds the
//! dialog, …), which is logged and dropped. The handoff service counts only
//! the first reply of an assignment, so a report sent twice is harmless.
//!
//! Bounded: at most [`MAX_PENDING`] dialogs wait; past it a new report is
//! dropped and logged (that handoff's timer may then fire). Reports still
//! waiting at shutdown are dropped with it.

use std::sync::Arc;

use chatai_kit::pending::{Pending, Sent};
use tokio_util::sync::CancellationToken;

use crate::handoffs::Handoffs;
use crate::holders::HolderView;

/// Most dialogs whose reply waits to be reported (one entry each; about
/// as many as operators can hold at once, with room to spare).
pub const MAX_PENDING: usize = 65_536;

/// Operator replies waiting to be reported: dialog → the operator who
/// replied (a later report for the same dialog replaces an earlier one).
#[derive(Debug)]
pub struct ReplyReporter {
    pending: Pending<i64, i64>,
}

impl Default for ReplyReporter {
    fn default() -> Self {
        ReplyReporter {
            pending: Pending::new(MAX_PENDING, "operator replies"),
        }
    }
}

impl ReplyReporter {
    pub fn new() -> Self {
        Self::default()
    }

    /// `operator_id`, holding `dialog_id`, replied: report it. Never waits.
    pub fn report(&self, dialog_id: i64, operator_id: i64) {
        self.pending.put(dialog_id, operator_id);
    }

    /// Sends the reports to `handoffs` until `shutdown`, and tells `view`
    /// which were accepted.
    pub async fn run(
        self: Arc<Self>,
        handoffs: Arc<dyn Handoffs>,
        view: Arc<HolderView>,
        shutdown: CancellationToken,
    ) {
        self.pending
            .run(shutdown, |dialog_id, operator_id| {
                let handoffs = handoffs.clone();
                let view = view.clone();
                async move {
                    match handoffs.operator_replied(dialog_id, operator_id).await {
                        Ok(()) => {
                            view.reply_recorded(dialog_id, operator_id);
                            Sent::Done
                        }
                        Err(cause) if cause.is_retryable() => {
                            tracing::debug!(%cause, dialog_id, operator_id, "the handoff service did not take a reply");
                            Sent::Retry
                        }
                        Err(cause) => {
                            tracing::warn!(%cause, dialog_id, operator_id, "the handoff service refused an operator's reply");
                            Sent::Done
                        }
                    }
                }
            })
            .await;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, VecDeque};
    use std::sync::Mutex;
    use std::time::Duration;

    use tokio::sync::Notify;

    use chatai_kit::holders::{HeldBy, HolderNote, NotedFor};

    use super::*;
    use crate::handoffs::{HandoffError, HandoffRecord, Holding, Priority, Refusal, RefusalKind};

    /// A handoff service whose `operator_replied` answers from a script
    /// (then `Ok`), counting the calls.
    #[derive(Default)]
    struct Scripted {
        answers: Mutex<VecDeque<Result<(), HandoffError>>>,
        calls: Mutex<Vec<(i64, i64)>>,
        called: Notify,
    }

    impl Scripted {
        fn new(answers: impl IntoIterator<Item = Result<(), HandoffError>>) -> Arc<Self> {
            Arc::new(Scripted {
                answers: Mutex::new(answers.into_iter().collect()),
                ..Default::default()
            })
        }

        fn calls(&self) -> Vec<(i64, i64)> {
            self.calls.lock().expect("not poisoned").clone()
        }
    }

    #[async_trait::async_trait]
    impl Handoffs for Scripted {
        async fn holding(&self, _: i64) -> Result<Holding, HandoffError> {
            unreachable!("the reporter only reports replies")
        }

        async fn request(
            &self,
            _: i64,
            _: i64,
            _: &str,
            _: Priority,
        ) -> Result<HandoffRecord, HandoffError> {
            unreachable!("the reporter only reports replies")
        }

        async fn operator_replied(
            &self,
            dialog_id: i64,
            operator_id: i64,
        ) -> Result<(), HandoffError> {
            self.calls
                .lock()
                .expect("not poisoned")
                .push((dialog_id, operator_id));
            self.called.notify_one();
            let answer = self.answers.lock().expect("not poisoned").pop_front();
            answer.unwrap_or(Ok(()))
        }
    }

    fn unavailable() -> Result<(), HandoffError> {
        Err(HandoffError::Unavailable {
            cause: "connection refused".into(),
        })
    }

    fn refused(kind: RefusalKind) -> Result<(), HandoffError> {
        Err(HandoffError::Refused(Refusal {
            kind,
            code: None,
            message: "no".into(),
        }))
    }

    /// A view in which operator 7 holds dialog 1.
    fn view() -> Arc<HolderView> {
        let view = Arc::new(HolderView::new());
        view.reset(Vec::new(), 1);
        view.apply(HolderNote {
            dialog_id: 1,
            user_id: 5,
            holder: HeldBy::Operator {
                operator_id: 7,
                operator_name: "Bo".into(),
            },
            version: 2,
            recipient: NotedFor::Operator(7),
            position: 1,
        });
        view
    }

    fn start(
        handoffs: Arc<Scripted>,
        view: Arc<HolderView>,
    ) -> (
        Arc<ReplyReporter>,
        CancellationToken,
        tokio::task::JoinHandle<()>,
    ) {
        let reporter = Arc::new(ReplyReporter::new());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(reporter.clone().run(handoffs, view, shutdown.clone()));
        (reporter, shutdown, task)
    }

    /// Waits (on the paused clock) until the handoff service was called
    /// `n` times.
    async fn called(handoffs: &Scripted, n: usize) {
        tokio::time::timeout(Duration::from_secs(600), async {
            while handoffs.calls().len() < n {
                handoffs.called.notified().await;
            }
        })
        .await
        .expect("the handoff service is called");
    }

    /// While the handoff service cannot be reached the report is sent again,
    /// with backoff, until it is accepted; then the view knows, so the next
    /// reply is not reported again.
    #[tokio::test(start_paused = true)]
    async fn a_report_is_retried_until_accepted() {
        let handoffs = Scripted::new([
            unavailable(),
            unavailable(),
            refused(RefusalKind::Exhausted),
        ]);
        let view = view();
        let (reporter, shutdown, task) = start(handoffs.clone(), view.clone());
        assert!(view.reply_to_record(1, 7));
        reporter.report(1, 7);
        called(&handoffs, 4).await;
        tokio::task::yield_now().await;
        assert_eq!(handoffs.calls(), vec![(1, 7); 4]);
        assert!(!view.reply_to_record(1, 7), "accepted, and remembered");
        // Nothing more is sent, however long it waits.
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(handoffs.calls().len(), 4);
        shutdown.cancel();
        task.await.expect("the reporter stops");
    }

    /// A refusal is final: logged, not retried, not remembered as accepted.
    #[tokio::test(start_paused = true)]
    async fn a_refused_report_is_dropped() {
        let handoffs = Scripted::new([refused(RefusalKind::Forbidden)]);
        let view = view();
        let (reporter, shutdown, task) = start(handoffs.clone(), view.clone());
        reporter.report(1, 7);
        called(&handoffs, 1).await;
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(handoffs.calls(), vec![(1, 7)]);
        assert!(view.reply_to_record(1, 7));
        shutdown.cancel();
        task.await.expect("the reporter stops");
    }

    /// The latest report per dialog waits; a put-back report never replaces
    /// a newer one; the map is bounded.
    #[test]
    fn pending_reports_are_bounded_and_latest_wins() {
        let reporter = ReplyReporter::new();
        reporter.report(1, 7);
        reporter.report(1, 8);
        reporter.pending.put_back([(1, 7), (2, 9)]);
        assert_eq!(reporter.pending.take(), HashMap::from([(1, 8), (2, 9)]));
        for dialog_id in 0..(MAX_PENDING as i64 + 10) {
            reporter.report(dialog_id, 7);
        }
        reporter.report(0, 8);
        let waiting = reporter.pending.take();
        assert_eq!(waiting.len(), MAX_PENDING);
        assert_eq!(waiting.get(&0), Some(&8), "a waiting dialog is updated");
    }
}
