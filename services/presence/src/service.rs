//! The presence service's domain API: who may do what, and input checks,
//! in front of the actor that holds the state.

use std::time::Duration;

use chatai_kit::identity::{Caller, MAX_NAME_BYTES, Role};

use crate::actor::{Listing, PresenceHandle};
use crate::error::PresenceError;
use crate::model::{ChosenStatus, Connection, OperatorView, ReportOrder};

/// The longest id (gateway, connection) accepted, in bytes.
const MAX_ID_LEN: usize = 128;
/// The longest gateway lease accepted (a day; gateways refresh every few
/// seconds).
const MAX_LEASE: Duration = Duration::from_secs(24 * 3600);

/// The presence service. Cheap to clone.
#[derive(Clone, Debug)]
pub struct PresenceService {
    presence: PresenceHandle,
}

impl PresenceService {
    pub fn new(presence: PresenceHandle) -> Self {
        PresenceService { presence }
    }

    /// A gateway opened an operator connection. Services only.
    pub async fn connection_opened(
        &self,
        caller: &Caller,
        gateway_id: String,
        connection: Option<Connection>,
        order: Option<ReportOrder>,
    ) -> Result<OperatorView, PresenceError> {
        service_only(caller)?;
        let gateway_id = checked_id("gateway_id", gateway_id)?;
        let connection = checked_connection(connection.ok_or(PresenceError::InvalidField {
            field: "connection",
            problem: "is required",
        })?)?;
        self.presence
            .connection_opened(gateway_id, connection, order)
            .await
    }

    /// A gateway's operator connection closed. Services only.
    pub async fn connection_closed(
        &self,
        caller: &Caller,
        gateway_id: String,
        connection_id: String,
        order: Option<ReportOrder>,
    ) -> Result<(), PresenceError> {
        service_only(caller)?;
        let gateway_id = checked_id("gateway_id", gateway_id)?;
        let connection_id = checked_id("connection_id", connection_id)?;
        self.presence
            .connection_closed(gateway_id, connection_id, order)
            .await
    }

    /// A gateway's full list of operator connections, valid for
    /// `ttl_seconds`. Services only.
    pub async fn refresh_connections(
        &self,
        caller: &Caller,
        gateway_id: String,
        connections: Vec<Connection>,
        ttl_seconds: u32,
        order: Option<ReportOrder>,
    ) -> Result<(), PresenceError> {
        service_only(caller)?;
        let gateway_id = checked_id("gateway_id", gateway_id)?;
        let ttl = Duration::from_secs(ttl_seconds.into());
        if ttl.is_zero() || ttl > MAX_LEASE {
            return Err(PresenceError::InvalidField {
                field: "ttl_seconds",
                problem: "must be between 1 second and 1 day",
            });
        }
        // A bad entry is left out, never the lease: refusing the whole
        // refresh would let every operator of that gateway go offline.
        let connections = connections
            .into_iter()
            .filter_map(|connection| {
                let operator_id = connection.operator_id;
                checked_connection(connection)
                    .inspect_err(|err| {
                        tracing::warn!(
                            gateway_id,
                            operator_id,
                            cause = %err,
                            "a leased connection was refused; the rest are kept"
                        );
                    })
                    .ok()
            })
            .collect();
        self.presence
            .refresh(gateway_id, connections, ttl, order)
            .await
    }

    /// The status an operator chose: the operator themself, an admin or a
    /// service. `status` is `None` when the request named no choosable one.
    pub async fn set_status(
        &self,
        caller: &Caller,
        operator_id: i64,
        status: Option<ChosenStatus>,
    ) -> Result<OperatorView, PresenceError> {
        let themself = caller.role == Role::Operator && caller.id == operator_id;
        if !themself && !caller.role.is_privileged() {
            return Err(PresenceError::Forbidden);
        }
        let operator_id = checked_operator(operator_id)?;
        let status = status.ok_or(PresenceError::InvalidField {
            field: "status",
            problem: "must be available, busy or away",
        })?;
        self.presence
            .set_status(operator_id, status, caller.connection_id.clone())
            .await
    }

    /// How many handoffs an operator holds. Services only (the handoff
    /// service).
    pub async fn set_load(
        &self,
        caller: &Caller,
        operator_id: i64,
        active_handoffs: u32,
    ) -> Result<OperatorView, PresenceError> {
        service_only(caller)?;
        let operator_id = checked_operator(operator_id)?;
        self.presence.set_load(operator_id, active_handoffs).await
    }

    /// One operator. Operators, admins and services.
    pub async fn get_operator(
        &self,
        caller: &Caller,
        operator_id: i64,
    ) -> Result<OperatorView, PresenceError> {
        may_read(caller)?;
        self.presence
            .get(operator_id)
            .await?
            .ok_or(PresenceError::OperatorNotFound(operator_id))
    }

    /// Every operator heard of since the service started, and the version
    /// the listing is as of. Operators, admins and services.
    pub async fn list_operators(&self, caller: &Caller) -> Result<Listing, PresenceError> {
        may_read(caller)?;
        self.presence.list().await
    }
}

fn service_only(caller: &Caller) -> Result<(), PresenceError> {
    match caller.role {
        Role::Service => Ok(()),
        _ => Err(PresenceError::Forbidden),
    }
}

fn may_read(caller: &Caller) -> Result<(), PresenceError> {
    match caller.role {
        Role::Operator | Role::Admin | Role::Service => Ok(()),
        Role::User => Err(PresenceError::Forbidden),
    }
}

fn checked_id(field: &'static str, id: String) -> Result<String, PresenceError> {
    if id.is_empty() {
        return Err(PresenceError::InvalidField {
            field,
            problem: "is required",
        });
    }
    if id.len() > MAX_ID_LEN {
        return Err(PresenceError::InvalidField {
            field,
            problem: "is longer than 128 bytes",
        });
    }
    Ok(id)
}

fn checked_operator(operator_id: i64) -> Result<i64, PresenceError> {
    if operator_id <= 0 {
        return Err(PresenceError::InvalidField {
            field: "operator_id",
            problem: "must be a positive id",
        });
    }
    Ok(operator_id)
}

fn checked_connection(connection: Connection) -> Result<Connection, PresenceError> {
    checked_operator(connection.operator_id)?;
    let connection_id = checked_id("connection_id", connection.connection_id)?;
    if connection.name.len() > MAX_NAME_BYTES {
        return Err(PresenceError::InvalidField {
            field: "name",
            problem: "is longer than 256 bytes",
        });
    }
    Ok(Connection {
        connection_id,
        ..connection
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::Arc;

    use chatai_kit::config::EventLogConfig;
    use chatai_kit::events::memory::MemoryLog;
    use chatai_kit::supervisor::Supervisor;
    use tokio_util::sync::CancellationToken;

    use crate::config::PresenceConfig;
    use crate::store::memory::MemoryStatusStore;

    fn service() -> PresenceService {
        let log = Arc::new(MemoryLog::new(&EventLogConfig::default()));
        let supervisor = Supervisor::new(CancellationToken::new());
        let store = Arc::new(MemoryStatusStore::default());
        let handle = PresenceHandle::spawn(
            &PresenceConfig::default(),
            log,
            Arc::new(crate::state::memory::MemoryState::default()),
            store,
            HashMap::new(),
            &supervisor,
        );
        PresenceService::new(handle)
    }

    fn caller(id: i64, role: Role) -> Caller {
        Caller {
            id,
            role,
            name: None,
            connection_id: None,
        }
    }

    fn conn(operator_id: i64) -> Connection {
        Connection {
            operator_id,
            connection_id: "c1".into(),
            name: String::new(),
        }
    }

    fn forbidden<T>(result: Result<T, PresenceError>) -> bool {
        matches!(result, Err(PresenceError::Forbidden))
    }

    fn field<T: std::fmt::Debug>(result: Result<T, PresenceError>) -> &'static str {
        match result {
            Err(PresenceError::InvalidField { field, .. }) => field,
            other => panic!("expected an invalid field, got {other:?}"),
        }
    }

    /// Only services report connections and load; users read nothing; an
    /// operator chooses only their own status, admins and services anyone's.
    #[tokio::test]
    async fn roles_are_enforced() {
        let s = service();
        let op = caller(7, Role::Operator);
        assert!(forbidden(
            s.connection_opened(&op, "gw".into(), Some(conn(7)), None)
                .await
        ));
        assert!(forbidden(
            s.connection_closed(&caller(0, Role::Admin), "gw".into(), "c1".into(), None)
                .await
        ));
        assert!(forbidden(
            s.refresh_connections(&op, "gw".into(), vec![], 10, None)
                .await
        ));
        assert!(forbidden(s.set_load(&op, 7, 1).await));
        assert!(forbidden(
            s.set_status(&op, 8, Some(ChosenStatus::Away)).await
        ));
        assert!(forbidden(s.list_operators(&caller(456, Role::User)).await));
        assert!(forbidden(s.get_operator(&caller(456, Role::User), 7).await));

        s.set_status(&op, 7, Some(ChosenStatus::Away))
            .await
            .expect("an operator sets their own status");
        s.set_status(&caller(1, Role::Admin), 8, Some(ChosenStatus::Busy))
            .await
            .expect("an admin sets anyone's");
        s.connection_opened(&Caller::service(), "gw".into(), Some(conn(7)), None)
            .await
            .expect("a service reports connections");
        assert_eq!(
            s.list_operators(&op).await.expect("listed").operators.len(),
            2
        );
    }

    /// Bad input is refused with the field it concerns; an unknown operator
    /// is not found.
    #[tokio::test]
    async fn input_is_checked() {
        let s = service();
        let svc = Caller::service();
        assert_eq!(field(s.set_status(&svc, 7, None).await), "status");
        assert_eq!(
            field(s.set_status(&svc, 0, Some(ChosenStatus::Busy)).await),
            "operator_id"
        );
        assert_eq!(
            field(
                s.connection_opened(&svc, String::new(), Some(conn(7)), None)
                    .await
            ),
            "gateway_id"
        );
        assert_eq!(
            field(s.connection_opened(&svc, "gw".into(), None, None).await),
            "connection"
        );
        assert_eq!(
            field(
                s.refresh_connections(&svc, "gw".into(), vec![], 0, None)
                    .await
            ),
            "ttl_seconds"
        );
        assert!(matches!(
            s.get_operator(&svc, 99).await,
            Err(PresenceError::OperatorNotFound(99))
        ));
    }

    /// A gateway's lease with one bad entry (a name over the limit, a bad
    /// id) keeps every good one: the bad entry is left out, the lease is not
    /// refused, so the gateway's other operators stay online.
    #[tokio::test]
    async fn a_bad_entry_does_not_refuse_the_lease() {
        let s = service();
        let svc = Caller::service();
        let good = Connection {
            connection_id: "good".into(),
            name: "Ann".into(),
            ..conn(7)
        };
        let long_name = Connection {
            connection_id: "long".into(),
            name: "x".repeat(MAX_NAME_BYTES + 1),
            ..conn(8)
        };
        s.refresh_connections(&svc, "gw".into(), vec![good, long_name, conn(-1)], 5, None)
            .await
            .expect("the lease is taken");
        let ann = s
            .get_operator(&svc, 7)
            .await
            .expect("the good entry is kept");
        assert!(ann.online, "{ann:?}");
        assert!(matches!(
            s.get_operator(&svc, 8).await,
            Err(PresenceError::OperatorNotFound(8))
        ));
    }
}
