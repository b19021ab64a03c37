//! Domain ↔ wire conversions for the event stream, in one place.

use std::sync::Arc;

use chatai_proto::v1 as pb;

use super::{Delivery, Event, Recipient};
use crate::identity::Role;

/// A wire recipient that names nobody.
#[derive(Debug, thiserror::Error)]
#[error("recipient is missing or invalid")]
pub struct InvalidRecipient;

impl From<InvalidRecipient> for tonic::Status {
    fn from(err: InvalidRecipient) -> Self {
        tonic::Status::invalid_argument(err.to_string())
    }
}

impl From<&Recipient> for pb::Recipient {
    fn from(recipient: &Recipient) -> Self {
        use pb::recipient::Kind;
        let kind = match recipient {
            Recipient::User(id) => Kind::User(*id),
            Recipient::Operator(id) => Kind::Operator(*id),
            Recipient::Room(room) => Kind::Room(room.to_string()),
            Recipient::Role(role) => Kind::Role(pb::Role::from(*role) as i32),
            Recipient::Everyone => Kind::Everyone(true),
        };
        pb::Recipient { kind: Some(kind) }
    }
}

impl TryFrom<&pb::Recipient> for Recipient {
    type Error = InvalidRecipient;

    fn try_from(recipient: &pb::Recipient) -> Result<Self, Self::Error> {
        use pb::recipient::Kind;
        match recipient.kind.as_ref().ok_or(InvalidRecipient)? {
            Kind::User(id) => Ok(Recipient::User(*id)),
            Kind::Operator(id) => Ok(Recipient::Operator(*id)),
            Kind::Room(room) if !room.is_empty() => Ok(Recipient::Room(room.as_str().into())),
            Kind::Room(_) => Err(InvalidRecipient),
            Kind::Role(role) => match pb::Role::try_from(*role) {
                Ok(pb::Role::User) => Ok(Recipient::Role(Role::User)),
                Ok(pb::Role::Operator) => Ok(Recipient::Role(Role::Operator)),
                Ok(pb::Role::Admin) => Ok(Recipient::Role(Role::Admin)),
                _ => Err(InvalidRecipient),
            },
            Kind::Everyone(_) => Ok(Recipient::Everyone),
        }
    }
}

impl From<Role> for pb::Role {
    fn from(role: Role) -> Self {
        match role {
            Role::User => pb::Role::User,
            Role::Operator => pb::Role::Operator,
            Role::Admin => pb::Role::Admin,
            Role::Service => pb::Role::Unspecified,
        }
    }
}

impl From<&Event> for pb::Event {
    fn from(event: &Event) -> Self {
        pb::Event {
            event_id: event.id.clone(),
            r#type: event.kind.clone(),
            body: event.body.to_vec(),
            timestamp_ms: event.timestamp_ms,
            trace_context: event.trace_context.clone(),
            origin_connection: event.origin_connection.clone().unwrap_or_default(),
            durable_recipient: event.durable_recipient.as_ref().map(pb::Recipient::from),
        }
    }
}

impl From<pb::Event> for Event {
    fn from(event: pb::Event) -> Self {
        Event {
            id: event.event_id,
            kind: event.r#type,
            body: event.body.into(),
            timestamp_ms: event.timestamp_ms,
            trace_context: event.trace_context,
            origin_connection: Some(event.origin_connection).filter(|c| !c.is_empty()),
            // An unreadable one only costs a duplicate, never an event.
            durable_recipient: event
                .durable_recipient
                .as_ref()
                .and_then(|recipient| Recipient::try_from(recipient).ok()),
        }
    }
}

impl From<&Delivery> for pb::Delivery {
    fn from(delivery: &Delivery) -> Self {
        pb::Delivery {
            recipient: Some((&delivery.recipient).into()),
            position: delivery.position,
            event: Some(delivery.event.as_ref().into()),
        }
    }
}

impl TryFrom<pb::Delivery> for Delivery {
    type Error = InvalidRecipient;

    fn try_from(delivery: pb::Delivery) -> Result<Self, Self::Error> {
        let recipient = Recipient::try_from(delivery.recipient.as_ref().ok_or(InvalidRecipient)?)?;
        Ok(Delivery {
            recipient,
            position: delivery.position,
            event: Arc::new(delivery.event.unwrap_or_default().into()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every recipient survives the trip to the wire and back.
    #[test]
    fn recipients_round_trip() {
        for recipient in [
            Recipient::User(1),
            Recipient::Operator(2),
            Recipient::Room("dialog:3".into()),
            Recipient::Role(Role::Operator),
            Recipient::Role(Role::Admin),
            Recipient::Everyone,
        ] {
            let wire = pb::Recipient::from(&recipient);
            assert_eq!(Recipient::try_from(&wire).unwrap(), recipient);
        }
        assert!(Recipient::try_from(&pb::Recipient { kind: None }).is_err());
    }
}
