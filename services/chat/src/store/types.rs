//! The domain types the store reads and writes: money, senders, users,
//! dialogs and messages. Nothing here knows about SQL.

use std::fmt;
use std::ops::{Add, Neg, Sub};

/// Micro-units in one unit of money.
const MICROS_PER_UNIT: i64 = 1_000_000;

/// Money in micro-units (1 unit = 1_000_000 micros).
///
/// Stored as a BIGINT, so sums are exact. Arithmetic saturates at the `i64`
/// bounds (about ±9.2 trillion units) instead of panicking.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Hash)]
pub struct Money(pub i64);

impl Money {
    /// No money at all.
    pub const ZERO: Money = Money(0);

    /// Converts a unit amount (e.g. `5.0` for five units), rounded to the
    /// nearest micro; out-of-range values saturate, NaN becomes zero.
    pub fn from_units(units: f64) -> Money {
        // `as` from f64 saturates and maps NaN to 0, which is what we want.
        Money((units * MICROS_PER_UNIT as f64).round() as i64)
    }

    /// The amount in units, for display or configuration; not for sums.
    pub fn as_units(self) -> f64 {
        self.0 as f64 / MICROS_PER_UNIT as f64
    }

    /// The amount in micro-units.
    pub fn micros(self) -> i64 {
        self.0
    }
}

/// Shows two to six decimals: `5.00`, `0.0015`, `-1.50`, `0.000001`.
impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        let micros_per_unit = MICROS_PER_UNIT.unsigned_abs();
        let whole = abs / micros_per_unit;
        let frac = format!("{:06}", abs % micros_per_unit);
        let trimmed = frac.trim_end_matches('0');
        let decimals = if trimmed.len() < 2 {
            &frac[..2]
        } else {
            trimmed
        };
        write!(f, "{sign}{whole}.{decimals}")
    }
}

impl Add for Money {
    type Output = Money;
    fn add(self, rhs: Money) -> Money {
        Money(self.0.saturating_add(rhs.0))
    }
}

impl Sub for Money {
    type Output = Money;
    fn sub(self, rhs: Money) -> Money {
        Money(self.0.saturating_sub(rhs.0))
    }
}

impl Neg for Money {
    type Output = Money;
    fn neg(self) -> Money {
        Money(self.0.saturating_neg())
    }
}

/// Who wrote a message. Stored as the text of [`Sender::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Sender {
    /// The dialog's owner.
    User,
    /// The AI assistant.
    Assistant,
    /// A human operator after a handoff.
    Operator,
}

impl Sender {
    /// The stored (and wire) name: `user`, `assistant` or `operator`.
    pub fn as_str(self) -> &'static str {
        match self {
            Sender::User => "user",
            Sender::Assistant => "assistant",
            Sender::Operator => "operator",
        }
    }

    /// The inverse of [`Sender::as_str`]; `None` for any other text.
    pub fn parse(text: &str) -> Option<Sender> {
        match text {
            "user" => Some(Sender::User),
            "assistant" => Some(Sender::Assistant),
            "operator" => Some(Sender::Operator),
            _ => None,
        }
    }
}

impl fmt::Display for Sender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A user as stored: the id comes from the token, never generated here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: i64,
    pub name: Option<String>,
    pub balance: Money,
    pub created_at_ms: i64,
}

/// A conversation owned by one user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dialog {
    pub id: i64,
    pub user_id: i64,
    pub created_at_ms: i64,
    /// Bumped by every message appended to the dialog.
    pub updated_at_ms: i64,
}

/// A stored message. Ids grow with insertion order inside a dialog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub id: i64,
    pub dialog_id: i64,
    pub sender: Sender,
    /// The user's or operator's id; usually `None` for the assistant.
    pub sender_id: Option<i64>,
    pub text: String,
    pub tokens_used: u32,
    pub created_at_ms: i64,
}

/// The dialog a new message goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DialogRef {
    /// A dialog that exists (`NotFound { what: "dialog" }` otherwise).
    Existing(i64),
    /// A new dialog of this user, opened in the same transaction as the
    /// message (`NotFound { what: "user" }` for an unknown user). Not opened
    /// when the idempotency key returns an earlier message.
    New { user_id: i64 },
}

/// A message to append; see [`ChatStore::append_message`](super::ChatStore::append_message).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewMessage<'a> {
    pub dialog: DialogRef,
    pub sender: Sender,
    pub sender_id: Option<i64>,
    pub text: &'a str,
    /// At most `i32::MAX` (the column is a 32-bit INTEGER).
    pub tokens_used: u32,
    /// Retries with the same key from the same sender and sender id (a `None`
    /// sender id counts as one sender) within 24 hours return the first
    /// message instead; after that the key is free again.
    pub idempotency_key: Option<&'a str>,
}

/// The balance around one charge: `before - amount == after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Charge {
    pub before: Money,
    pub after: Money,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_converts_units_with_rounding() {
        assert_eq!(Money::from_units(5.0), Money(5_000_000));
        assert_eq!(Money::from_units(0.0000015), Money(2));
        assert_eq!(Money::from_units(-1.25), Money(-1_250_000));
        assert_eq!(Money::from_units(f64::NAN), Money::ZERO);
        assert_eq!(Money(1_500_000).as_units(), 1.5);
    }

    #[test]
    fn money_displays_two_to_six_decimals() {
        assert_eq!(Money(5_000_000).to_string(), "5.00");
        assert_eq!(Money(1_500).to_string(), "0.0015");
        assert_eq!(Money(-1_500_000).to_string(), "-1.50");
        assert_eq!(Money(1).to_string(), "0.000001");
        assert_eq!(Money(0).to_string(), "0.00");
        assert_eq!(Money(i64::MIN).to_string(), "-9223372036854.775808");
    }

    #[test]
    fn money_arithmetic_saturates() {
        assert_eq!(Money(3) + Money(4), Money(7));
        assert_eq!(Money(3) - Money(4), Money(-1));
        assert_eq!(Money(i64::MAX) + Money(1), Money(i64::MAX));
        assert_eq!(-Money(i64::MIN), Money(i64::MAX));
    }

    #[test]
    fn sender_round_trips_through_text() {
        for sender in [Sender::User, Sender::Assistant, Sender::Operator] {
            assert_eq!(Sender::parse(sender.as_str()), Some(sender));
        }
        assert_eq!(Sender::parse("system"), None);
    }
}
