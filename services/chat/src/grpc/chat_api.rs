//! `chatai.v1.Chat`, served over a [`ChatService`]: each call reads the
//! caller, converts the request ([`super::from_proto`]), calls the service
//! and converts the answer ([`super::to_proto`]). A failure is a
//! [`crate::ChatError`], turned into a `Status` by its one mapping
//! (`crate::error`).

use chatai_kit::identity::Caller;
use chatai_proto::v1 as pb;
use chatai_proto::v1::chat_server::Chat;
use tonic::{Request, Response, Status};

use super::from_proto::{self, Page};
use super::to_proto;
use crate::service::ChatService;

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
        let sent = self
            .service
            .send_message(
                &caller,
                request.dialog_id,
                &request.text,
                from_proto::idempotency_key(&request.idempotency_key),
                request.handoff_position,
            )
            .await?;
        tracing::Span::current().record("dialog_id", sent.dialog_id);
        Ok(Response::new(sent.into()))
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
        let page = Page::from(&request);
        let history = self
            .service
            .history(&caller, request.dialog_id, page.before, page.limit)
            .await?;
        Ok(Response::new(history.into()))
    }

    #[tracing::instrument(skip_all, fields(caller, role))]
    async fn list_dialogs(
        &self,
        request: Request<pb::ListDialogsRequest>,
    ) -> Result<Response<pb::ListDialogsResponse>, Status> {
        let caller = Caller::from_metadata(request.metadata())?;
        tracing::Span::current().record("caller", caller.id);
        tracing::Span::current().record("role", caller.role.as_str());
        let page = Page::from(request.get_ref());
        let list = self
            .service
            .list_dialogs(&caller, page.before, page.limit)
            .await?;
        Ok(Response::new(list.into()))
    }

    #[tracing::instrument(skip_all, fields(caller, dialog_id))]
    async fn mark_read(
        &self,
        request: Request<pb::MarkReadRequest>,
    ) -> Result<Response<pb::MarkReadResponse>, Status> {
        let caller = Caller::from_metadata(request.metadata())?;
        let request = request.into_inner();
        tracing::Span::current().record("caller", caller.id);
        tracing::Span::current().record("dialog_id", request.dialog_id);
        self.service
            .mark_read(
                &caller,
                request.dialog_id,
                request.message_id,
                request.handoff_position,
            )
            .await?;
        Ok(Response::new(pb::MarkReadResponse {}))
    }

    #[tracing::instrument(skip_all, fields(caller, user_id))]
    async fn top_up(
        &self,
        request: Request<pb::TopUpRequest>,
    ) -> Result<Response<pb::GetBalanceResponse>, Status> {
        let caller = Caller::from_metadata(request.metadata())?;
        let request = request.into_inner();
        tracing::Span::current().record("caller", caller.id);
        tracing::Span::current().record("user_id", request.user_id);
        let balance = self
            .service
            .top_up(&caller, request.user_id, from_proto::amount(request.amount))
            .await?;
        Ok(Response::new(to_proto::balance(request.user_id, balance)))
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
        Ok(Response::new(to_proto::balance(user_id, balance)))
    }

    #[tracing::instrument(skip_all)]
    async fn request_handoff(
        &self,
        request: Request<pb::RequestHandoffForDialogRequest>,
    ) -> Result<Response<pb::HandoffRecord>, Status> {
        let caller = Caller::from_metadata(request.metadata())?;
        let request = request.into_inner();
        let record = self
            .service
            .request_handoff(
                &caller,
                request.dialog_id,
                &request.reason,
                from_proto::priority(request.priority),
            )
            .await?;
        Ok(Response::new(record.into()))
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
        Ok(Response::new(to_proto::access(dialog, operator_id)))
    }
}
