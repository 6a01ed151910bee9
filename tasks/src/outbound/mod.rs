//! Every request hookq makes to another service, and nothing else: reply delivery
//! ([`send`]: callbacks signed per Standard Webhooks, Meta's Graph and Send APIs), the
//! SSRF guard callbacks pass through ([`guard`]), the LLM reply generator ([`llm`]), and
//! operational events to `HOOKQ_ALERT_URL` ([`alert`]).
//! The domain (`hookq-core`) decides what to send and records what happened; this room
//! owns the HTTP clients, their timeouts and how an answer is classified.

pub mod alert;
pub mod guard;
pub mod llm;
pub mod send;
