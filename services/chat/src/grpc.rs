//! The chat service's gRPC adapter: wire types in, domain calls, wire types
//! out. The only place `chatai.v1` chat messages are touched.

use chatai_kit::identity::Caller;
use chatai_proto::v1 as pb;
use chatai_proto::v1::chat_server::Chat;
use tonic::{Request, Response, Status};

use crate::service::ChatService;
use crate::store::{Message, Sender};

/// Largest history page.
const MAX_HISTORY: u32 = 200;
/// History page when the request names none.
const DEFAULT_HISTORY: u32 = 50;

/// `chatai.v1.Chat` over a [`ChatService`].
pub struct ChatApi {
    service: ChatService,
}

impl ChatApi {
    pub fn new(service: ChatService) -> Self {
        ChatApi { service }
    }
}

#[tonic::async_trait]
impl Chat for ChatApi {
    #[tracing::instrument(skip_all, fields(caller, dialog_id))]
    async fn send_message(
        &self,
        request: Request<pb::SendMessageRequest>,
    ) -> Result<Response<pb::SendMessageResponse>, Status> {
        let caller = Caller::from_metadata(request.metadata())?;
        tracing::Span::current().record("caller", caller.id);
        let request = request.into_inner();
        let key = Some(request.idempotency_key.as_str()).filter(|k| !k.is_empty());
        let sent = self
            .service
            .send_message(
                &caller,
                request.dialog_id,
                &request.text,
                key,
                request.handoff_position,
            )
            .await?;
        tracing::Span::current().record("dialog_id", sent.dialog_id);
        Ok(Response::new(pb::SendMessageResponse {
            dialog_id: sent.dialog_id,
            message_id: sent.message_id,
            created: sent.created,
        }))
    }

    #[tracing::instrument(skip_all, fields(caller, dialog_id))]
    async fn get_history(
        &self,
        request: Request<pb::GetHistoryRequest>,
    ) -> Result<Response<pb::GetHistoryResponse>, Status> {
        let caller = Caller::from_metadata(request.metadata())?;
        let request = request.into_inner();
        tracing::Span::current().record("caller", caller.id);
        tracing::Span::current().record("dialog_id", request.dialog_id);
        let limit = match request.limit {
            0 => DEFAULT_HISTORY,
            n => n.min(MAX_HISTORY),
        };
        let before = Some(request.before_message_id).filter(|id| *id > 0);
        let (dialog, messages) = self
            .service
            .history(&caller, request.dialog_id, before, limit)
            .await?;
        Ok(Response::new(pb::GetHistoryResponse {
            dialog_id: dialog.id,
            user_id: dialog.user_id,
            messages: messages.into_iter().map(pb::ChatMessage::from).collect(),
        }))
    }

    #[tracing::instrument(skip_all, fields(caller))]
    async fn typing(
        &self,
        request: Request<pb::TypingRequest>,
    ) -> Result<Response<pb::TypingResponse>, Status> {
        let caller = Caller::from_metadata(request.metadata())?;
        let request = request.into_inner();
        self.service
            .typing(
                &caller,
                request.dialog_id,
                request.is_typing,
                request.handoff_position,
            )
            .await?;
        Ok(Response::new(pb::TypingResponse {}))
    }

    #[tracing::instrument(skip_all, fields(caller))]
    async fn get_balance(
        &self,
        request: Request<pb::GetBalanceRequest>,
    ) -> Result<Response<pb::GetBalanceResponse>, Status> {
        let caller = Caller::from_metadata(request.metadata())?;
        let user_id = request.into_inner().user_id;
        let balance = self.service.balance(&caller, user_id).await?;
        Ok(Response::new(pb::GetBalanceResponse {
            user_id,
            balance: balance.as_units(),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn request_handoff(
        &self,
        request: Request<pb::RequestHandoffForDialogRequest>,
    ) -> Result<Response<pb::HandoffRecord>, Status> {
        Ok(Response::new(self.handoff_for(request).await?))
    }

    #[tracing::instrument(skip_all)]
    async fn check_access(
        &self,
        request: Request<pb::CheckAccessRequest>,
    ) -> Result<Response<pb::CheckAccessResponse>, Status> {
        let caller = Caller::from_metadata(request.metadata())?;
        let (dialog, operator_id) = self
            .service
            .check_access(&caller, request.into_inner().dialog_id)
            .await?;
        Ok(Response::new(pb::CheckAccessResponse {
            dialog_id: dialog.id,
            user_id: dialog.user_id,
            operator_id,
        }))
    }
}

impl ChatApi {
    /// Kept out of the trait impl so the trait block stays a list of calls.
    async fn handoff_for(
        &self,
        request: Request<pb::RequestHandoffForDialogRequest>,
    ) -> Result<pb::HandoffRecord, Status> {
        let caller = Caller::from_metadata(request.metadata())?;
        let request = request.into_inner();
        let priority = pb::Priority::try_from(request.priority).unwrap_or(pb::Priority::Normal);
        Ok(self
            .service
            .request_handoff(&caller, request.dialog_id, &request.reason, priority)
            .await?)
    }
}

impl From<Message> for pb::ChatMessage {
    fn from(message: Message) -> Self {
        pb::ChatMessage {
            message_id: message.id,
            dialog_id: message.dialog_id,
            sender: match message.sender {
                Sender::User => pb::Sender::User,
                Sender::Assistant => pb::Sender::Assistant,
                Sender::Operator => pb::Sender::Operator,
            } as i32,
            sender_id: message.sender_id.unwrap_or_default(),
            text: message.text,
            tokens_used: message.tokens_used,
            created_at_ms: message.created_at_ms,
        }
    }
}
