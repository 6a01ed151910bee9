//! The comment use case against the contract (sections 4 and 9), one table row per
//! case, run over [`FakeWorld`](super::fakes::FakeWorld): no database, no queue, a few
//! milliseconds for the whole table. The real-Postgres versions of these cases
//! (`tests/pipeline.rs`, `tests/events_inbound.rs`) prove the adapters; this table
//! proves the decisions.
//!
//! Every row starts from the same [`world`], arranges what it needs on top, inserts
//! one log, runs [`process_webhook`] once, and compares the answer and the log's final
//! columns with what it wants. Besides each row's own checks, every row checks that the
//! reply text changes only when the run replies, that a started run counts its attempt
//! and tells the directory its version, and that a run that did not start touches
//! nothing. One test walks the table and names every failing row.

use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::{Value, json};

use super::{
    Attempt, Done,
    fakes::{FakeWorld, Script, log_row},
    process_webhook,
};
use crate::{
    error::{Error, FailureKind},
    intake::Handling,
    logs::{LogRow, LogStatus, Outcome, SkipReason},
    resources::ReplyDelivery,
};

// ------------------------------------------------------------------------ the world

/// user_1's Instagram account: `none` delivery, default persona Ava.
const IG: &str = "17841400000001";
/// user_1's WhatsApp Bridge number: `callback` delivery, default persona Ava.
const BRIDGE: &str = "+0987654321";
/// user_2 has two Instagram accounts (the compact shape cannot choose by user alone).
const IG_2A: &str = "17841400000002";
const IG_2B: &str = "17841400000003";
/// user_3's only integration: a Facebook page with no default persona.
const FB: &str = "448242228374517";
/// The directory version the log store reports when a run starts.
const VERSION: i64 = 7;
/// The log every row runs.
const LOG: i64 = 1;

/// What Ava answers Ana (the default persona's template, rendered).
const AVA_TO_ANA: &str = "Hi ana, Ava here!";

fn world() -> std::sync::Arc<FakeWorld> {
    let w = FakeWorld::new();
    w.state().directory_version = VERSION;
    let u1 = w.add_user("user_1");
    let ava = w.add_persona(
        u1.id,
        "persona_default",
        "Ava",
        "Hi {sender_name}, {persona_name} here!",
        &["scam", "free money"],
    );
    w.add_persona(
        u1.id,
        "persona_named",
        "Nico",
        "{persona_name} says thanks, {sender_name}",
        &[],
    );
    let pia = w.add_persona(
        u1.id,
        "persona_post",
        "Pia",
        "{persona_name} loves the {post_caption}",
        &[],
    );
    let ig = w.add_integration(u1.id, "instagram", IG, ReplyDelivery::None, Some(ava));
    w.add_integration(
        u1.id,
        "whatsapp",
        BRIDGE,
        ReplyDelivery::Callback,
        Some(ava),
    );
    w.add_post(ig.id, "post_plain", "denim jacket", None, true);
    w.add_post(ig.id, "post_pia", "summer dress", Some(pia), true);
    w.add_post(ig.id, "post_closed", "closed post", None, false);
    let u2 = w.add_user("user_2");
    w.add_integration(u2.id, "instagram", IG_2A, ReplyDelivery::None, Some(ava));
    let b = w.add_integration(u2.id, "instagram", IG_2B, ReplyDelivery::None, Some(ava));
    w.add_post(b.id, "post_2b", "boots", None, true);
    let u3 = w.add_user("user_3");
    w.add_integration(u3.id, "facebook", FB, ReplyDelivery::None, None);
    w
}

// ------------------------------------------------------------------------- the logs

/// A Meta-shaped Instagram comment from Ana on `post_plain`.
fn comment(text: &str) -> LogRow {
    LogRow {
        account_id: Some(IG.into()),
        post_external_id: Some("post_plain".into()),
        item_id: Some("c_1".into()),
        sender_id: Some("ana_id".into()),
        sender_name: Some("ana".into()),
        message_text: Some(text.into()),
        ..log_row(LOG, "instagram", "comment", Handling::Reply)
    }
}

/// The compact shape: names the user and the post, not the account.
fn compact(user: &str, post: &str, text: &str) -> LogRow {
    LogRow {
        account_id: None,
        user_external_id: Some(user.into()),
        post_external_id: Some(post.into()),
        ..comment(text)
    }
}

/// An Instagram direct message (no post).
fn message(text: Option<&str>, payload: Value) -> LogRow {
    LogRow {
        post_external_id: None,
        message_text: text.map(str::to_owned),
        event_type: "message".into(),
        payload,
        ..comment("")
    }
}

/// A Bridge `message.received` to user_1's number.
fn bridge_message(text: &str) -> LogRow {
    LogRow {
        account_id: Some(BRIDGE.into()),
        item_id: Some("msg_123".into()),
        sender_id: Some("+1234567890".into()),
        message_text: Some(text.into()),
        ..log_row(LOG, "whatsapp", "message.received", Handling::Reply)
    }
}

/// An event that is only recorded, or a delivery report.
fn event(
    source: &str,
    event_type: &str,
    handling: Handling,
    account: Option<&str>,
    payload: Value,
) -> LogRow {
    LogRow {
        account_id: account.map(str::to_owned),
        payload,
        ..log_row(LOG, source, event_type, handling)
    }
}

/// The log as an earlier run left it.
fn earlier(mut log: LogRow, status: LogStatus, reply: Option<&str>) -> LogRow {
    log.status = status;
    log.attempts = 1;
    log.reply_text = reply.map(str::to_owned);
    log
}

// -------------------------------------------------------------------- what is wanted

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Transient,
    Permanent,
}

impl Kind {
    fn of(e: &Error) -> Kind {
        match e.kind() {
            FailureKind::Transient { .. } => Kind::Transient,
            FailureKind::Permanent => Kind::Permanent,
        }
    }
}

/// A row's own extra check.
type Check = fn(&FakeWorld, &LogRow) -> Result<(), String>;

struct Want {
    result: Result<Done, Kind>,
    status: LogStatus,
    outcome: Option<Outcome>,
    skip: Option<SkipReason>,
    /// A fragment `error_message` holds; `None`: no `error_message`.
    error_has: Option<&'static str>,
    /// The integration (by account id) the log ends attached to.
    integration: Option<&'static str>,
    /// `next_retry_at` about this many seconds from now.
    retry_in_secs: Option<i64>,
    also: Option<Check>,
}

impl Want {
    fn base(result: Result<Done, Kind>, status: LogStatus) -> Want {
        Want {
            result,
            status,
            outcome: None,
            skip: None,
            error_has: None,
            integration: None,
            retry_in_secs: None,
            also: None,
        }
    }

    fn on(mut self, account: Option<&'static str>) -> Want {
        self.integration = account;
        self
    }

    fn status(mut self, status: LogStatus) -> Want {
        self.status = status;
        self
    }

    fn outcome(mut self, outcome: Option<Outcome>) -> Want {
        self.outcome = outcome;
        self
    }

    fn error(mut self, fragment: &'static str) -> Want {
        self.error_has = Some(fragment);
        self
    }

    fn also(mut self, check: Check) -> Want {
        self.also = Some(check);
        self
    }
}

/// Replied and finished (`none` delivery) on user_1's Instagram account.
fn replied(reply: &str) -> Want {
    Want::base(
        Ok(Done::Replied {
            reply: reply.into(),
        }),
        LogStatus::Processed,
    )
    .outcome(Some(Outcome::Replied))
    .on(Some(IG))
}

/// Stored and staged: the log waits `pending` for its delivery job.
fn delivering(reply: &str, account: &'static str) -> Want {
    Want::base(
        Ok(Done::Delivering {
            reply: reply.into(),
        }),
        LogStatus::Pending,
    )
    .on(Some(account))
}

fn skipped(reason: SkipReason) -> Want {
    let mut w = Want::base(Ok(Done::Skipped(reason)), LogStatus::Processed)
        .outcome(Some(Outcome::Skipped))
        .on(Some(IG));
    w.skip = Some(reason);
    w
}

fn recorded(account: Option<&'static str>) -> Want {
    Want::base(Ok(Done::Recorded), LogStatus::Processed)
        .outcome(Some(Outcome::Recorded))
        .on(account)
}

/// A permanent failure: `dead_letter` at once.
fn dead(fragment: &'static str) -> Want {
    Want::base(Err(Kind::Permanent), LogStatus::DeadLetter).error(fragment)
}

/// A transient failure with attempts left: `failed`, the next run `secs` from now.
fn retrying(fragment: &'static str, secs: i64) -> Want {
    let mut w = Want::base(Err(Kind::Transient), LogStatus::Failed).error(fragment);
    w.retry_in_secs = Some(secs);
    w
}

/// A transient failure on the last attempt.
fn dead_after(fragment: &'static str) -> Want {
    Want::base(Err(Kind::Transient), LogStatus::DeadLetter).error(fragment)
}

fn already_finished(status: LogStatus) -> Want {
    Want::base(Ok(Done::AlreadyFinished), status)
}

// ----------------------------------------------------------------------- the table

/// The first run, with the queue's usual 10 s before a retry.
const FIRST: Attempt = Attempt {
    number: 1,
    retry_in: Some(Duration::from_secs(10)),
};
const SECOND: Attempt = Attempt {
    number: 2,
    retry_in: Some(Duration::from_secs(20)),
};

struct Case {
    name: &'static str,
    /// Arranges the world beyond [`world`] and answers the log to run.
    arrange: fn(&FakeWorld) -> LogRow,
    attempt: Attempt,
    want: Want,
}

fn case(name: &'static str, arrange: fn(&FakeWorld) -> LogRow, want: Want) -> Case {
    Case {
        name,
        arrange,
        attempt: FIRST,
        want,
    }
}

impl Case {
    fn attempt(mut self, attempt: Attempt) -> Case {
        self.attempt = attempt;
        self
    }
}

fn same<T: PartialEq + std::fmt::Debug>(what: &str, got: T, want: T) -> Result<(), String> {
    if got == want {
        Ok(())
    } else {
        Err(format!("{what}: got {got:?}, want {want:?}"))
    }
}

fn no_generation(w: &FakeWorld, _: &LogRow) -> Result<(), String> {
    same("generator calls", w.generator_calls().len(), 0)?;
    same("replies stored", w.replies().len(), 0)
}

fn cases() -> Vec<Case> {
    use SkipReason::*;
    vec![
        // ---- replies and their delivery (section 4, "Reply delivery") ----
        case(
            "replied: none delivery finishes the log with the reply",
            |_| comment("Nice jacket!"),
            replied(AVA_TO_ANA).also(|w, row| {
                let replies = w.replies();
                same("replies stored", replies.len(), 1)?;
                same("delivery", replies[0].delivery, ReplyDelivery::None)?;
                same("delivery jobs", w.state().delivery_jobs.len(), 0)?;
                same(
                    "persona on the log",
                    row.persona_id,
                    w.persona_id("persona_default"),
                )?;
                let call = &w.generator_calls()[0];
                same("generator message", call.message.as_str(), "Nice jacket!")?;
                same(
                    "generator caption",
                    call.post_caption.as_str(),
                    "denim jacket",
                )
            }),
        ),
        case(
            "replied: the sender id stands in for a missing sender name",
            |_| LogRow {
                sender_name: None,
                ..comment("hello")
            },
            replied("Hi ana_id, Ava here!"),
        ),
        case(
            "staged: callback delivery stores the reply and leaves the log pending for its job",
            |_| bridge_message("Hello, can you help me?"),
            delivering("Hi +1234567890, Ava here!", BRIDGE).also(|w, row| {
                same("delivery jobs", w.state().delivery_jobs.clone(), vec![LOG])?;
                let o = w.outbound_of(LOG).ok_or("no outbound reply")?;
                same(
                    "outbound kind and status",
                    (o.kind, o.status.as_str()),
                    (ReplyDelivery::Callback, "pending"),
                )?;
                same(
                    "persona on the log",
                    row.persona_id,
                    w.persona_id("persona_default"),
                )
            }),
        ),
        case(
            "staged: graph_api delivery is staged the same way",
            |w| {
                w.state()
                    .integrations
                    .iter_mut()
                    .filter(|i| i.account_id == IG)
                    .for_each(|i| i.reply_delivery = "graph_api".into());
                comment("Nice jacket!")
            },
            delivering(AVA_TO_ANA, IG).also(|w, _| {
                let o = w.outbound_of(LOG).ok_or("no outbound reply")?;
                same("outbound kind", o.kind, ReplyDelivery::GraphApi)?;
                same("delivery jobs", w.state().delivery_jobs.len(), 1)
            }),
        ),
        case(
            "staged: a failed delivery is staged again (operator resend) with the stored reply",
            |w| {
                w.add_outbound(LOG, None, ReplyDelivery::Callback, "failed", None);
                earlier(
                    bridge_message("Hello"),
                    LogStatus::Pending,
                    Some("Stored reply"),
                )
            },
            delivering("Stored reply", BRIDGE).also(|w, _| {
                same(
                    "outbound status",
                    w.outbound_of(LOG).map(|o| o.status),
                    Some("pending".into()),
                )?;
                same("delivery jobs", w.state().delivery_jobs.len(), 1)?;
                same("generator calls", w.generator_calls().len(), 0)
            }),
        )
        .attempt(SECOND),
        // A stale re-run while the reply's delivery is under way: nothing is staged
        // again, but START moved the log to `processing` and nothing moves it back
        // (the real outbox does the same on `Staged::Live`): see the commit's report.
        case(
            "staged: a delivery already under way is left alone (the log stays processing)",
            |w| {
                w.add_outbound(LOG, None, ReplyDelivery::Callback, "sending", None);
                earlier(
                    bridge_message("Hello"),
                    LogStatus::Pending,
                    Some("Stored reply"),
                )
            },
            delivering("Stored reply", BRIDGE)
                .status(LogStatus::Processing)
                .also(|w, _| {
                    same("delivery jobs", w.state().delivery_jobs.len(), 0)?;
                    same(
                        "outbound status",
                        w.outbound_of(LOG).map(|o| o.status),
                        Some("sending".into()),
                    )
                }),
        )
        .attempt(SECOND),
        case(
            "staged: a reply already delivered finishes the log as replied",
            |w| {
                w.add_outbound(
                    LOG,
                    None,
                    ReplyDelivery::Callback,
                    "delivered",
                    Some("wamid.9"),
                );
                earlier(
                    bridge_message("Hello"),
                    LogStatus::Failed,
                    Some("Stored reply"),
                )
            },
            Want {
                result: Ok(Done::Replied {
                    reply: "Stored reply".into(),
                }),
                ..replied("")
            }
            .on(Some(BRIDGE))
            .also(|w, _| same("delivery jobs", w.state().delivery_jobs.len(), 0)),
        )
        .attempt(SECOND),
        // ---- content rules (section 4 skip reasons, section 9 limits) ----
        case(
            "skipped own_message: an echo is marked own",
            |_| LogRow {
                is_own: true,
                event_type: "message_echo".into(),
                ..comment("Thanks for your order!")
            },
            skipped(OwnMessage).also(no_generation),
        ),
        case(
            "skipped own_message: the sender is the integration's account",
            |_| LogRow {
                sender_id: Some(IG.into()),
                ..comment("Thanks all!")
            },
            skipped(OwnMessage),
        ),
        case(
            "skipped own_message: checked before replies_disabled",
            |_| LogRow {
                is_own: true,
                post_external_id: Some("post_closed".into()),
                ..comment("hi")
            },
            skipped(OwnMessage),
        ),
        case(
            "skipped empty: whitespace only",
            |_| comment("   "),
            skipped(Empty).also(no_generation),
        ),
        case(
            "skipped empty: a message with no text and no attachment",
            |_| message(None, json!({})),
            skipped(Empty),
        ),
        case(
            "skipped blocklisted: a word, whatever its case",
            |_| comment("What a SCAM, honestly"),
            skipped(Blocklisted),
        ),
        case(
            "skipped blocklisted: a phrase, whatever the spaces between its words",
            |_| comment("get FREE   money now"),
            skipped(Blocklisted),
        ),
        case(
            "replied: a blocklist word inside another word is not a match",
            |_| comment("scammers beware"),
            replied(AVA_TO_ANA),
        ),
        case(
            "skipped spam: three links",
            |_| comment("http://a.example https://b.example www.c.example"),
            skipped(Spam),
        ),
        case(
            "replied: two links are not spam",
            |_| comment("http://a.example https://b.example"),
            replied(AVA_TO_ANA),
        ),
        case(
            "skipped spam: one character ten times in a row",
            |_| comment("nooooooooooooo"),
            skipped(Spam),
        ),
        case(
            "skipped replies_disabled: the post's switch is off",
            |_| LogRow {
                post_external_id: Some("post_closed".into()),
                ..comment("hello")
            },
            skipped(RepliesDisabled),
        ),
        case(
            "skipped too_long: over 2,200 characters",
            |_| comment(&"long ".repeat(500)),
            skipped(TooLong),
        ),
        case(
            "skipped window_closed: a direct message older than the 24 h reply window",
            |_| LogRow {
                occurred_at: Some(Utc::now() - chrono::Duration::hours(25)),
                ..message(Some("hello"), json!({}))
            },
            skipped(WindowClosed),
        ),
        case(
            "replied: a direct message inside the reply window",
            |_| LogRow {
                occurred_at: Some(Utc::now() - chrono::Duration::hours(23)),
                ..message(Some("hello"), json!({}))
            },
            replied(AVA_TO_ANA),
        ),
        case(
            "replied: a comment is answered however old (the window is for messages)",
            |_| LogRow {
                occurred_at: Some(Utc::now() - chrono::Duration::days(30)),
                ..comment("hello")
            },
            replied(AVA_TO_ANA),
        ),
        case(
            "replied: exactly 2,200 characters is not too long",
            |_| comment(&format!("{}x", "ab ".repeat(733))),
            replied(AVA_TO_ANA),
        ),
        case(
            "replied: an attachment without text is content, not empty",
            |_| {
                message(
                    None,
                    json!({"entry": [{"messaging": [{"message": {"attachments": [{"type": "image"}]}}]}]}),
                )
            },
            replied(AVA_TO_ANA).also(|w, _| {
                same(
                    "generator message",
                    w.generator_calls()[0].message.as_str(),
                    "",
                )
            }),
        ),
        case(
            "replied: a mention without text is content, not empty",
            |_| LogRow {
                event_type: "mention".into(),
                message_text: None,
                ..comment("")
            },
            replied(AVA_TO_ANA),
        ),
        // ---- finding the data (section 4, section 9 compact shape) ----
        case(
            "resolved compact: the post names its integration",
            |_| compact("user_2", "post_2b", "Love these"),
            replied(AVA_TO_ANA).on(Some(IG_2B)).also(|w, _| {
                same(
                    "generator caption",
                    w.generator_calls()[0].post_caption.as_str(),
                    "boots",
                )
            }),
        ),
        case(
            "resolved compact: the user's only integration when the post is unknown",
            |_| compact("user_1", "post_nowhere", "hi"),
            replied(AVA_TO_ANA),
        ),
        case(
            "dead_letter compact: two integrations and an unknown post is ambiguous",
            |_| compact("user_2", "post_nowhere", "hi"),
            dead("integration ambiguous: user 'user_2' has 2 instagram integrations")
                .also(no_generation),
        ),
        case(
            "dead_letter compact: no integration for the platform",
            |_| compact("user_3", "post_nowhere", "hi"),
            dead("user 'user_3' has no instagram integration"),
        ),
        case(
            "dead_letter compact: unknown user",
            |_| compact("nobody", "post_plain", "hi"),
            dead("user 'nobody' not found"),
        ),
        case(
            "dead_letter: unknown account names the missing integration",
            |_| LogRow {
                account_id: Some("999000".into()),
                ..comment("hi")
            },
            dead("integration for instagram account '999000' not found").also(no_generation),
        ),
        case(
            "dead_letter: an unknown named persona",
            |_| LogRow {
                persona_external_id: Some("ghost".into()),
                ..comment("hi")
            },
            dead("persona 'ghost' not found"),
        ),
        case(
            "dead_letter: no persona anywhere names the integration",
            |_| LogRow {
                source: crate::intake::Source::Facebook,
                account_id: Some(FB.into()),
                ..comment("hi")
            },
            dead("has no default persona").also(|_, row| {
                let msg = row.error_message.as_deref().unwrap_or("");
                if msg.contains(FB) {
                    Ok(())
                } else {
                    Err(format!("error_message does not name {FB}: {msg}"))
                }
            }),
        ),
        case(
            "dead_letter: an event naming neither account nor user",
            |_| LogRow {
                account_id: None,
                ..comment("hi")
            },
            dead("names no account or user"),
        ),
        // The persona is resolved before the rules run, so an own message on an
        // integration without a persona is dead-lettered, not skipped: see the report.
        case(
            "dead_letter: an own message where no persona exists (persona before rules)",
            |_| LogRow {
                source: crate::intake::Source::Facebook,
                account_id: Some(FB.into()),
                is_own: true,
                ..comment("hi")
            },
            dead("no persona"),
        ),
        case(
            "replied: an unknown post is not an error",
            |_| LogRow {
                post_external_id: Some("post_unknown".into()),
                ..comment("Where is this from?")
            },
            replied(AVA_TO_ANA).also(|w, _| {
                same(
                    "generator caption",
                    w.generator_calls()[0].post_caption.as_str(),
                    "",
                )
            }),
        ),
        case(
            "persona: the post's wins over the one named",
            |_| LogRow {
                post_external_id: Some("post_pia".into()),
                persona_external_id: Some("persona_named".into()),
                ..comment("hi")
            },
            replied("Pia loves the summer dress").also(|w, row| {
                same(
                    "persona on the log",
                    row.persona_id,
                    w.persona_id("persona_post"),
                )
            }),
        ),
        case(
            "persona: the one named wins over the integration's default",
            |_| LogRow {
                persona_external_id: Some("persona_named".into()),
                ..comment("hi")
            },
            replied("Nico says thanks, ana").also(|w, row| {
                same(
                    "persona on the log",
                    row.persona_id,
                    w.persona_id("persona_named"),
                )
            }),
        ),
        case(
            "persona: the integration's default when the post has none and none is named",
            |_| comment("hi"),
            replied(AVA_TO_ANA).also(|w, row| {
                same(
                    "persona on the log",
                    row.persona_id,
                    w.persona_id("persona_default"),
                )
            }),
        ),
        // ---- generation and failures (section 4 permanent/transient, section 9 LLM) ----
        case(
            "replied: a reply stored by an earlier run is reused, not generated",
            |_| earlier(comment("hi"), LogStatus::Failed, Some("Earlier reply")),
            Want {
                result: Ok(Done::Replied {
                    reply: "Earlier reply".into(),
                }),
                ..replied("")
            }
            .also(|w, _| same("generator calls", w.generator_calls().len(), 0)),
        )
        .attempt(SECOND),
        case(
            "failed: a transient generator error is retried after the planned delay",
            |w| {
                w.script(Script::Transient {
                    message: "LLM timed out".into(),
                    retry_after: None,
                });
                comment("hi")
            },
            retrying("LLM timed out", 10),
        ),
        case(
            "failed: the generator's Retry-After wins over the planned delay",
            |w| {
                w.script(Script::Transient {
                    message: "LLM answered 429".into(),
                    retry_after: Some(Duration::from_secs(60)),
                });
                comment("hi")
            },
            retrying("LLM answered 429", 60),
        ),
        case(
            "dead_letter: a transient generator error on the last attempt",
            |w| {
                w.script(Script::Transient {
                    message: "LLM timed out".into(),
                    retry_after: None,
                });
                comment("hi")
            },
            dead_after("LLM timed out (after 5 attempts)"),
        )
        .attempt(Attempt {
            number: 5,
            retry_in: None,
        }),
        case(
            "dead_letter: a permanent generator error at once, no silent fallback",
            |w| {
                w.script(Script::Permanent("LLM answered 400: bad request".into()));
                comment("hi")
            },
            dead("LLM answered 400: bad request"),
        ),
        case(
            "replied: a NUL in the generated text is stored as U+FFFD",
            |w| {
                w.script(Script::Text("Thanks\0!".into()));
                comment("hi")
            },
            replied("Thanks\u{FFFD}!"),
        ),
        case(
            "failed: a NUL in the error is stored as U+FFFD",
            |w| {
                w.script(Script::Transient {
                    message: "bad\0gateway".into(),
                    retry_after: None,
                });
                comment("hi")
            },
            retrying("bad\u{FFFD}gateway", 10),
        ),
        // ---- events that are only recorded (section 4 outcome, section 9 routing) ----
        case(
            "recorded: a reaction, with the integration its account names",
            |_| {
                event(
                    "instagram",
                    "message_reaction",
                    Handling::Record,
                    Some(IG),
                    json!({}),
                )
            },
            recorded(Some(IG)).also(no_generation),
        ),
        case(
            "recorded: seen from an unknown account never fails",
            |_| {
                event(
                    "instagram",
                    "messaging_seen",
                    Handling::Record,
                    Some("999000"),
                    json!({}),
                )
            },
            recorded(None),
        ),
        case(
            "recorded: an unknown field with no account",
            |_| {
                event(
                    "instagram",
                    "unknown:story_insights",
                    Handling::Record,
                    None,
                    json!({}),
                )
            },
            recorded(None),
        ),
        case(
            "recorded: connection.status is kept per connection, no integration needed",
            |_| {
                event(
                    "whatsapp",
                    "connection.status",
                    Handling::Record,
                    None,
                    json!({"event_type": "connection.status", "data": {"status": "connected", "session_id": "session_abc"}}),
                )
            },
            recorded(None).also(|w, _| {
                let s = w.state();
                let c = s
                    .connections
                    .get("session_abc")
                    .ok_or("no connection status kept")?;
                same(
                    "connection",
                    (c.report.status.as_str(), c.log_id, c.integration_id),
                    ("connected", LOG, None),
                )
            }),
        ),
        case(
            "recorded: connection.status naming a known number attaches its integration",
            |_| {
                event(
                    "whatsapp",
                    "connection.status",
                    Handling::Record,
                    None,
                    json!({"data": {"status": "disconnected", "session_id": "s1", "phone_number": BRIDGE}}),
                )
            },
            recorded(Some(BRIDGE)).also(|w, _| {
                let bridge = w.integration_of_account(BRIDGE).map(|i| i.id);
                let s = w.state();
                let c = s
                    .connections
                    .get(BRIDGE)
                    .ok_or("no connection status kept under the number")?;
                same(
                    "connection",
                    (c.report.status.as_str(), c.integration_id),
                    ("disconnected", bridge),
                )
            }),
        ),
        // ---- delivery reports (section 9 Bridge routing) ----
        case(
            "recorded: message.sent is matched to its outbound reply, which names the integration",
            |w| {
                let bridge = w.integration_of_account(BRIDGE).map(|i| i.id);
                w.add_outbound(
                    99,
                    bridge,
                    ReplyDelivery::Callback,
                    "delivered",
                    Some("wamid.out_001"),
                );
                LogRow {
                    item_id: Some("wamid.out_001".into()),
                    ..event(
                        "whatsapp",
                        "message.sent",
                        Handling::DeliveryStatus,
                        None,
                        json!({"data": {"message_id": "wamid.out_001", "status": "sent"}}),
                    )
                }
            },
            recorded(Some(BRIDGE)).also(|w, _| {
                let o = w.outbound_of(99).ok_or("no outbound reply")?;
                same(
                    "provider status",
                    o.provider_status.as_deref(),
                    Some("sent"),
                )
            }),
        ),
        case(
            "recorded: an unmatched message.failed falls back to its account",
            |_| LogRow {
                item_id: Some("m2".into()),
                ..event(
                    "whatsapp",
                    "message.failed",
                    Handling::DeliveryStatus,
                    Some(BRIDGE),
                    json!({"data": {"message_id": "m2", "error": "not on WhatsApp"}}),
                )
            },
            recorded(Some(BRIDGE)).also(|w, _| {
                let s = w.state();
                same("reports applied", s.reports.len(), 1)?;
                same(
                    "report",
                    (s.reports[0].status.as_str(), s.reports[0].error.as_deref()),
                    ("failed", Some("not on WhatsApp")),
                )
            }),
        ),
        case(
            "recorded: an unmatched report with no account is still recorded",
            |_| {
                event(
                    "whatsapp",
                    "message.failed",
                    Handling::DeliveryStatus,
                    None,
                    json!({"data": {"message_id": "m3"}}),
                )
            },
            recorded(None),
        ),
        case(
            "recorded: a Cloud API status is matched by its message id",
            |w| {
                let bridge = w.integration_of_account(BRIDGE).map(|i| i.id);
                w.add_outbound(
                    99,
                    bridge,
                    ReplyDelivery::GraphApi,
                    "delivered",
                    Some("wamid.2"),
                );
                event(
                    "whatsapp",
                    "whatsapp_status",
                    Handling::DeliveryStatus,
                    Some("106540352242922"),
                    json!({"entry": [{"changes": [{"value": {"statuses": [{"id": "wamid.2", "status": "read"}]}}]}]}),
                )
            },
            recorded(Some(BRIDGE)).also(|w, _| {
                same(
                    "provider status",
                    w.outbound_of(99).and_then(|o| o.provider_status),
                    Some("read".into()),
                )
            }),
        ),
        // ---- the log's state machine (section 4 statuses) ----
        case(
            "already finished: a processed log is not run again",
            |_| LogRow {
                outcome: Some(Outcome::Replied),
                ..earlier(comment("hi"), LogStatus::Processed, Some("Done before"))
            },
            already_finished(LogStatus::Processed)
                .outcome(Some(Outcome::Replied))
                .also(no_generation),
        ),
        case(
            "already finished: a dead letter waits for an operator",
            |_| LogRow {
                error_message: Some("user 'nobody' not found".into()),
                ..earlier(comment("hi"), LogStatus::DeadLetter, None)
            },
            already_finished(LogStatus::DeadLetter)
                .error("user 'nobody' not found")
                .also(no_generation),
        ),
        case(
            "replied: a failed log's next run clears its error and retry time",
            |_| LogRow {
                error_message: Some("LLM timed out".into()),
                next_retry_at: Some(Utc::now()),
                ..earlier(comment("hi"), LogStatus::Failed, None)
            },
            replied(AVA_TO_ANA),
        )
        .attempt(SECOND),
        case(
            "replied: a processing log is run again after a lost lease",
            |_| earlier(comment("hi"), LogStatus::Processing, None),
            replied(AVA_TO_ANA),
        )
        .attempt(SECOND),
    ]
}

// ---------------------------------------------------------------------- the walker

/// Runs one row; every mismatch, joined.
async fn run(case: &Case) -> Result<(), String> {
    let w = world();
    let id = w.insert_log((case.arrange)(&w));
    let before = w.log(id).ok_or("the arranged log is missing")?;
    let startable = crate::logs::transitions::START.allows(before.status);
    let result = process_webhook(&w.deps(), id, case.attempt).await;
    let row = w.log(id).ok_or("the log vanished")?;
    let want = &case.want;
    let mut errs: Vec<String> = Vec::new();
    let mut check = |r: Result<(), String>| {
        if let Err(e) = r {
            errs.push(e);
        }
    };

    check(match (&result, &want.result) {
        (Ok(got), Ok(w)) if got == w => Ok(()),
        (Err(e), Err(kind)) if Kind::of(e) == *kind => Ok(()),
        (got, w) => Err(format!("answer: got {got:?}, want {w:?}")),
    });
    check(same("status", row.status.as_str(), want.status.as_str()));
    check(same(
        "outcome",
        row.outcome.map(Outcome::as_str),
        want.outcome.map(Outcome::as_str),
    ));
    check(same(
        "skip_reason",
        row.skip_reason.map(SkipReason::as_str),
        want.skip.map(SkipReason::as_str),
    ));
    check(match (&row.error_message, want.error_has) {
        (None, None) => Ok(()),
        (Some(m), Some(f)) if m.contains(f) => Ok(()),
        (got, f) => Err(format!(
            "error_message: got {got:?}, want one holding {f:?}"
        )),
    });
    let integration = want
        .integration
        .map(|acc| w.integration_of_account(acc).map(|i| i.id));
    check(same(
        "integration_id",
        row.integration_id,
        integration.flatten(),
    ));
    check(match (row.next_retry_at, want.retry_in_secs) {
        (None, None) => Ok(()),
        (Some(at), Some(secs)) => {
            let left = (at - Utc::now()).num_milliseconds();
            if (secs * 1000 - 2000..=secs * 1000).contains(&left) {
                Ok(())
            } else {
                Err(format!(
                    "next_retry_at: {left} ms away, want about {secs} s"
                ))
            }
        }
        (got, secs) => Err(format!("next_retry_at: got {got:?}, want {secs:?} s away")),
    });
    // The reply text changes only when the run replies.
    let reply = match &want.result {
        Ok(Done::Replied { reply } | Done::Delivering { reply }) => Some(reply.clone()),
        _ => before.reply_text.clone(),
    };
    check(same("reply_text", row.reply_text.clone(), reply));
    // A started run counts itself and tells a caching directory the version it saw;
    // one that did not start touched nothing.
    let observed = w.state().observed_versions.clone();
    if startable {
        check(same(
            "attempts",
            row.attempts,
            i32::try_from(case.attempt.number).unwrap_or(i32::MAX),
        ));
        check(same("observed directory versions", observed, vec![VERSION]));
    } else {
        check(same("attempts", row.attempts, before.attempts));
        check(same("observed directory versions", observed, vec![]));
        check(same("updated_at", row.updated_at, before.updated_at));
    }
    if let Some(also) = want.also {
        check(also(&w, &row));
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(errs.join("; "))
    }
}

#[tokio::test]
async fn every_row_of_the_contract_table() {
    let table = cases();
    let mut names: Vec<&str> = table.iter().map(|c| c.name).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), table.len(), "row names must be unique");

    let started = Instant::now();
    let mut failures = Vec::new();
    for case in &table {
        if let Err(why) = run(case).await {
            failures.push(format!("  {}: {why}", case.name));
        }
    }
    println!("{} rows in {:?}", table.len(), started.elapsed());
    assert!(
        failures.is_empty(),
        "{} of {} rows failed:\n{}",
        failures.len(),
        table.len(),
        failures.join("\n")
    );
}
