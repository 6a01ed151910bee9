//! Reply generation behind one trait: the persona template (default) or an LLM.

use async_trait::async_trait;

use crate::{
    comment::ports::{ReplyContext, ReplyGenerator},
    error::Result,
};

/// Renders the persona template's placeholders: `{sender_name}`, `{message}`,
/// `{persona_name}`, `{post_caption}`. Unknown `{…}` are left as written.
pub struct TemplateRenderer;

/// `ctx.reply_template` with its placeholders filled from `ctx` in one pass (a value's
/// own `{…}` is not expanded again), trimmed.
pub fn render(ctx: &ReplyContext<'_>) -> String {
    let mut out = String::with_capacity(ctx.reply_template.len() + 32);
    let mut rest = ctx.reply_template;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let after = &rest[start..];
        let end = after.find('}');
        let value = end.and_then(|end| match &after[1..end] {
            "sender_name" => Some(ctx.sender_name),
            "message" => Some(ctx.message),
            "persona_name" => Some(ctx.persona_name),
            "post_caption" => Some(ctx.post_caption),
            _ => None,
        });
        match (value, end) {
            (Some(v), Some(end)) => {
                out.push_str(v);
                rest = &after[end + 1..];
            }
            _ => {
                out.push('{');
                rest = &after[1..];
            }
        }
    }
    out.push_str(rest);
    out.trim().to_string()
}

#[async_trait]
impl ReplyGenerator for TemplateRenderer {
    async fn generate(&self, ctx: &ReplyContext<'_>) -> Result<String> {
        Ok(render(ctx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_placeholders_once_and_keeps_unknown_ones() {
        let ctx = ReplyContext {
            sender_name: "Ana",
            message: "{persona_name}?",
            persona_name: "Bot",
            post_caption: "Jacket",
            reply_template: "Hi {sender_name}! {persona_name} here about {post_caption}: {message} {unknown} {",
            system_prompt: None,
        };
        assert_eq!(
            render(&ctx),
            "Hi Ana! Bot here about Jacket: {persona_name}? {unknown} {"
        );
    }
}
