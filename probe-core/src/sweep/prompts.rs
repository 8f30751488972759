//! Labelled prompt sets: JSON lines with `id`, `text` (or `messages`) and `label`.
//!
//! A line may carry `messages` — OpenAI-style `[{"role": "system" | "user" | "assistant",
//! "content": "…"}]` — instead of `text`: such a prompt is rendered with the model's chat
//! template ([`PromptSet::render_chat`]) before it is generated from or extracted, and its
//! rendering is tokenised as written ([`SpecialTokens::AsWritten`]). A file uses one or the
//! other on every line.
//!
//! Every error names the file and line and the bad value, so a user can fix the file
//! without reading code: `invalid prompt file: data/p.jsonl:3: missing field "text"`.

use std::collections::{BTreeMap, HashMap};
use std::io::BufRead;
use std::path::Path;

use serde_json::Value;

use serde::{Deserialize, Serialize};

use crate::key::slug;
use crate::{Error, Result, SpecialTokens};

/// Longest line accepted in a prompt file (4 MiB).
pub const MAX_LINE_BYTES: usize = 4 << 20;

/// The roles a chat message may have.
pub const CHAT_ROLES: [&str; 3] = ["system", "user", "assistant"];

/// One message of a chat prompt (OpenAI style).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The message text.
    pub content: String,
}

impl ChatMessage {
    /// A message from parts.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self { role: role.into(), content: content.into() }
    }
}

/// One labelled prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Prompt {
    /// Unique id (a JSON string or integer in the file; integers are kept as their decimal text).
    pub id: String,
    /// The text, verbatim; for a chat prompt its rendering (empty until
    /// [`PromptSet::render_chat`]).
    pub text: String,
    /// The label (a JSON string, number or boolean in the file, as text), if the file has one.
    pub label: Option<String>,
    /// The chat messages of a chat prompt (`messages` in the file).
    pub messages: Option<Vec<ChatMessage>>,
}

impl Prompt {
    /// A prompt from parts.
    pub fn new(id: impl Into<String>, text: impl Into<String>, label: Option<String>) -> Self {
        Self { id: id.into(), text: text.into(), label, messages: None }
    }
    /// A chat prompt from parts (to be rendered with [`PromptSet::render_chat`]).
    pub fn chat(id: impl Into<String>, messages: Vec<ChatMessage>, label: Option<String>) -> Self {
        Self { id: id.into(), text: String::new(), label, messages: Some(messages) }
    }
}

/// Which fields a prompt file must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct PromptFormat {
    /// Every line needs an `id` (otherwise a missing id becomes the line number).
    pub require_id: bool,
    /// Every line needs a `label`, and there must be at least two classes.
    pub require_label: bool,
}

impl PromptFormat {
    /// `id`, `text` and `label` all required: the sweep's format.
    pub fn labelled() -> Self {
        Self { require_id: true, require_label: true }
    }
    /// Only `text` required; `id` defaults to the line number (extraction and generation inputs).
    pub fn texts() -> Self {
        Self { require_id: false, require_label: false }
    }
}

/// A loaded prompt set, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PromptSet {
    /// The set's name (the file stem, slugged): names cache folders.
    pub name: String,
    /// The prompts, in file order.
    pub prompts: Vec<Prompt>,
    /// How the texts are tokenised: [`SpecialTokens::AsWritten`] once chat prompts are rendered.
    pub special_tokens: SpecialTokens,
}

impl PromptSet {
    /// A prompt set from parts; `name` is slugged.
    pub fn new(name: &str, prompts: Vec<Prompt>) -> Self {
        Self { name: slug(name), prompts, special_tokens: SpecialTokens::Add }
    }

    /// True when the prompts are chat messages (`messages` lines).
    pub fn is_chat(&self) -> bool {
        self.prompts.iter().any(|p| p.messages.is_some())
    }

    /// Renders every chat prompt's messages with `render` (a model's chat template, with the
    /// generation prompt added) into its text; the texts are then tokenised as written (the
    /// template writes the special tokens). A set of plain texts is returned unchanged.
    ///
    /// # Errors
    /// The first error of `render`, prefixed with the prompt's id; [`Error::InvalidInput`] when
    /// a rendering is empty.
    pub fn render_chat(mut self, render: impl Fn(&[ChatMessage]) -> Result<String>) -> Result<Self> {
        if !self.is_chat() {
            return Ok(self);
        }
        for p in &mut self.prompts {
            let Some(messages) = &p.messages else { continue };
            let text =
                render(messages).map_err(|e| Error::invalid("chat template", format!("prompt {:?}: {e}", p.id)))?;
            if text.is_empty() {
                return Err(Error::invalid("chat template", format!("prompt {:?}: the rendering is empty", p.id)));
            }
            p.text = text;
        }
        self.special_tokens = SpecialTokens::AsWritten;
        Ok(self)
    }

    /// Refuses chat prompts that were not rendered: their text is not known yet.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the first chat prompt without a rendering.
    pub fn check_rendered(&self) -> Result<()> {
        match self.prompts.iter().find(|p| p.messages.is_some() && p.text.is_empty()) {
            Some(p) => Err(Error::invalid(
                "prompt",
                format!("{:?} has chat messages that were not rendered with a chat template", p.id),
            )),
            None => Ok(()),
        }
    }

    /// The same prompts under a name given by the user (`probe sweep --prompt-set`), which
    /// names cache folders and so is taken as is or refused, never rewritten.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the value when it is empty, longer than 80 characters,
    /// starts with `.`, or has a character other than ASCII letters, digits, `.`, `_` and `-`
    /// (so `..`-only names and `/` can never leave the cache's root).
    pub fn with_name(mut self, name: &str) -> Result<Self> {
        let ok_chars = name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if name.is_empty() || name.len() > 80 || name.starts_with('.') || !ok_chars || name.contains("..") {
            return Err(Error::invalid(
                "prompt set name",
                format!(
                    "{name:?}: use 1 to 80 ASCII letters, digits, '.', '_' or '-', not starting with '.' and without '..'"
                ),
            ));
        }
        self.name = name.to_owned();
        Ok(self)
    }

    /// A labelled prompt file (JSON lines with `id`, `text` or `messages`, and `label`), named
    /// after the file's stem: what a sweep reads. Unlabelled inputs: [`PromptSet::load`] with
    /// [`PromptFormat::texts`].
    ///
    /// # Errors
    /// As [`PromptSet::load`].
    pub fn from_jsonl(path: impl AsRef<Path>) -> Result<Self> {
        Self::load(path.as_ref(), PromptFormat::labelled())
    }

    /// Reads and checks a JSON-lines prompt file, line by line: a line over
    /// [`MAX_LINE_BYTES`] is refused as soon as the limit is passed, without reading the rest.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming `file:line` and the bad value for: an unreadable or
    /// empty file, invalid UTF-8, a line over [`MAX_LINE_BYTES`], a line that is not a JSON
    /// object, a missing or mistyped field, an empty text, a duplicate id (with the line of
    /// its first use), or (when labels are required) fewer than two classes.
    pub fn load(path: &Path, format: PromptFormat) -> Result<Self> {
        let file = std::fs::File::open(path)
            .map_err(|e| Error::invalid("prompt file", format!("{}: cannot be read: {e}", path.display())))?;
        let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        Self::read(&name, &path.display().to_string(), std::io::BufReader::new(file), format)
    }

    /// Parses JSON lines; `origin` names the source in messages. See [`PromptSet::load`].
    ///
    /// # Errors
    /// As [`PromptSet::load`].
    pub fn parse(name: &str, origin: &str, bytes: &[u8], format: PromptFormat) -> Result<Self> {
        Self::read(name, origin, bytes, format)
    }

    /// Reads JSON lines from `reader`, one line at a time (at most [`MAX_LINE_BYTES`] + 1 bytes of
    /// a line are ever held). See [`PromptSet::load`].
    fn read(name: &str, origin: &str, mut reader: impl BufRead, format: PromptFormat) -> Result<Self> {
        let bad = |line: usize, msg: String| Error::invalid("prompt file", format!("{origin}:{line}: {msg}"));
        let mut prompts = Vec::new();
        let mut seen: HashMap<String, usize> = HashMap::new();
        // Whether the file's lines carry `messages`, and the first line that said so.
        let mut kind: Option<(bool, usize)> = None;
        let mut raw = Vec::new();
        let mut line_no = 0;
        loop {
            line_no += 1;
            match read_line_capped(&mut reader, &mut raw, MAX_LINE_BYTES)
                .map_err(|e| Error::invalid("prompt file", format!("{origin}:{line_no}: cannot be read: {e}")))?
            {
                LineRead::Eof => break,
                LineRead::TooLong => {
                    return Err(bad(
                        line_no,
                        format!(
                            "line is over the limit of {MAX_LINE_BYTES} bytes ({} MiB); split or shorten it",
                            MAX_LINE_BYTES >> 20
                        ),
                    ));
                }
                LineRead::Line => {}
            }
            let text = std::str::from_utf8(&raw)
                .map_err(|e| bad(line_no, format!("invalid UTF-8 at byte {} of the line", e.valid_up_to())))?;
            let text = text.strip_suffix('\r').unwrap_or(text);
            if text.trim().is_empty() {
                continue;
            }
            let value: Value = serde_json::from_str(text)
                .map_err(|e| bad(line_no, format!("not valid JSON ({e}): {}", clip(text))))?;
            let Value::Object(obj) = value else {
                return Err(bad(line_no, format!("expected a JSON object, found {}", clip(text))));
            };
            let (text_field, messages) = match (obj.get("text"), obj.get("messages")) {
                (Some(_), Some(_)) => {
                    return Err(bad(line_no, "has both \"text\" and \"messages\"; give one of them".into()));
                }
                (None, Some(m)) => (String::new(), Some(parse_messages(m).map_err(|msg| bad(line_no, msg))?)),
                (Some(Value::String(s)), None) if !s.is_empty() => (s.clone(), None),
                (Some(Value::String(_)), None) => return Err(bad(line_no, "field \"text\" is empty".into())),
                (Some(other), None) => {
                    return Err(bad(
                        line_no,
                        format!("field \"text\" must be a string, found {}", clip(&other.to_string())),
                    ));
                }
                (None, None) => return Err(bad(line_no, "missing field \"text\"".into())),
            };
            match kind {
                None => kind = Some((messages.is_some(), line_no)),
                Some((chat, first)) if chat != messages.is_some() => {
                    let (this, that) = if chat { ("text", "messages") } else { ("messages", "text") };
                    return Err(bad(
                        line_no,
                        format!("has \"{this}\" but line {first} has \"{that}\": use one of them on every line"),
                    ));
                }
                Some(_) => {}
            }
            let id = match obj.get("id") {
                Some(Value::String(s)) if !s.is_empty() => s.clone(),
                Some(Value::Number(n)) if n.is_u64() || n.is_i64() => n.to_string(),
                Some(other) => {
                    return Err(bad(
                        line_no,
                        format!(
                            "field \"id\" must be a non-empty string or an integer, found {}",
                            clip(&other.to_string())
                        ),
                    ));
                }
                None if format.require_id => return Err(bad(line_no, "missing field \"id\"".into())),
                None => line_no.to_string(),
            };
            let label = match obj.get("label") {
                Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
                // Integers are class names or numbers; other numbers are numeric labels (ridge).
                Some(Value::Number(n)) => Some(n.to_string()),
                Some(Value::Bool(b)) => Some(b.to_string()),
                Some(Value::Null) | None if format.require_label => {
                    return Err(bad(line_no, "missing field \"label\"".into()));
                }
                Some(Value::Null) | None => None,
                Some(other) => {
                    return Err(bad(
                        line_no,
                        format!(
                            "field \"label\" must be a non-empty string, a number or a boolean, found {}",
                            clip(&other.to_string())
                        ),
                    ));
                }
            };
            if let Some(first) = seen.insert(id.clone(), line_no) {
                return Err(bad(line_no, format!("duplicate id {id:?} (first on line {first})")));
            }
            prompts.push(Prompt { id, text: text_field, label, messages });
        }
        if prompts.is_empty() {
            return Err(Error::invalid("prompt file", format!("{origin}: the file has no prompts")));
        }
        let set = Self::new(if name.is_empty() { "prompts" } else { name }, prompts);
        if format.require_label {
            let classes = set.classes();
            if classes.len() < 2 {
                return Err(Error::invalid(
                    "prompt file",
                    format!(
                        "{origin}: every prompt has the label {:?}; a probe needs at least two classes",
                        classes.first().map(String::as_str).unwrap_or("")
                    ),
                ));
            }
        }
        Ok(set)
    }

    /// The texts, in order.
    pub fn texts(&self) -> Vec<String> {
        self.prompts.iter().map(|p| p.text.clone()).collect()
    }

    /// The distinct labels, sorted: class `i` is `classes()[i]`.
    pub fn classes(&self) -> Vec<String> {
        let mut c: Vec<String> = self.prompts.iter().filter_map(|p| p.label.clone()).collect();
        c.sort();
        c.dedup();
        c
    }

    /// Number of prompts per label.
    pub fn class_counts(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for p in &self.prompts {
            if let Some(l) = &p.label {
                *m.entry(l.clone()).or_insert(0) += 1;
            }
        }
        m
    }

    /// The class index of every prompt (into [`PromptSet::classes`]).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the first prompt without a label.
    pub fn class_indices(&self) -> Result<Vec<usize>> {
        let classes = self.classes();
        self.prompts
            .iter()
            .map(|p| match &p.label {
                Some(l) => Ok(classes.binary_search(l).expect("label is among the classes")),
                None => Err(Error::invalid("prompt", format!("{:?} has no label", p.id))),
            })
            .collect()
    }

    /// Number of prompts.
    pub fn len(&self) -> usize {
        self.prompts.len()
    }

    /// True when there are no prompts.
    pub fn is_empty(&self) -> bool {
        self.prompts.is_empty()
    }
}

/// What [`read_line_capped`] found.
enum LineRead {
    /// End of input: no more lines.
    Eof,
    /// A line (without its `\n`) is in the buffer.
    Line,
    /// The line has more than the limit of bytes; reading stopped there.
    TooLong,
}

/// Reads one line (up to `\n` or the end) into `buf` (cleared first), holding at most
/// `cap + 1` bytes: a longer line is [`LineRead::TooLong`] as soon as the limit is passed.
fn read_line_capped(reader: &mut impl BufRead, buf: &mut Vec<u8>, cap: usize) -> std::io::Result<LineRead> {
    buf.clear();
    let mut any = false;
    loop {
        let chunk = match reader.fill_buf() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if chunk.is_empty() {
            return Ok(if any { LineRead::Line } else { LineRead::Eof });
        }
        any = true;
        let (part, done) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (&chunk[..i], Some(i + 1)),
            None => (chunk, None),
        };
        if buf.len() + part.len() > cap {
            return Ok(LineRead::TooLong);
        }
        buf.extend_from_slice(part);
        let used = done.unwrap_or(chunk.len());
        reader.consume(used);
        if done.is_some() {
            return Ok(LineRead::Line);
        }
    }
}

/// A `messages` field: a non-empty list of `{"role", "content"}` objects with a known role.
fn parse_messages(v: &Value) -> std::result::Result<Vec<ChatMessage>, String> {
    let Value::Array(items) = v else {
        return Err(format!("field \"messages\" must be a list of messages, found {}", clip(&v.to_string())));
    };
    if items.is_empty() {
        return Err("field \"messages\" is empty".into());
    }
    items
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let role = m.get("role").and_then(Value::as_str);
            let content = m.get("content").and_then(Value::as_str);
            match (role, content) {
                (Some(r), Some(c)) if CHAT_ROLES.contains(&r) => Ok(ChatMessage::new(r, c)),
                (Some(r), Some(_)) => {
                    Err(format!("message #{i} has role {r:?} (expected one of {})", CHAT_ROLES.join(", ")))
                }
                _ => Err(format!(
                    "message #{i} must be an object with string \"role\" and \"content\", found {}",
                    clip(&m.to_string())
                )),
            }
        })
        .collect()
}

fn clip(s: &str) -> String {
    const MAX: usize = 80;
    if s.chars().count() <= MAX { s.to_owned() } else { format!("{}…", s.chars().take(MAX).collect::<String>()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<PromptSet> {
        PromptSet::parse("p", "p.jsonl", s.as_bytes(), PromptFormat::labelled())
    }

    #[test]
    fn parses_ids_texts_labels() {
        let s =
            parse("{\"id\":\"a\",\"text\":\"x\",\"label\":1}\n\n{\"id\":7,\"text\":\"y\",\"label\":0}\r\n").unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s.prompts[1].id, "7");
        assert_eq!(s.classes(), vec!["0", "1"]);
        assert_eq!(s.class_indices().unwrap(), vec![1, 0]);
    }

    #[test]
    fn errors_name_file_line_and_value() {
        let e = parse("{\"id\":\"a\",\"text\":\"x\",\"label\":1}\n{\"id\":\"b\",\"label\":0}\n").unwrap_err();
        assert_eq!(e.to_string(), "invalid prompt file: p.jsonl:2: missing field \"text\"");
        let e = parse("{\"id\":\"a\",\"text\":\"x\",\"label\":1}\n{\"id\":\"a\",\"text\":\"y\",\"label\":0}\n")
            .unwrap_err();
        assert!(e.to_string().contains("p.jsonl:2: duplicate id \"a\" (first on line 1)"), "{e}");
        let e = parse("{\"id\":\"a\",\"text\":\"x\",\"label\":1}\n{\"id\":\"b\",\"text\":\"y\",\"label\":1}\n")
            .unwrap_err();
        assert!(e.to_string().contains("label \"1\""), "{e}");
        let e = parse("").unwrap_err();
        assert!(e.to_string().contains("no prompts"), "{e}");
        let e = PromptSet::parse("p", "p.jsonl", b"{\"id\":\"a\",\"text\":\"\xff\"}", PromptFormat::labelled())
            .unwrap_err();
        assert!(e.to_string().contains("p.jsonl:1: invalid UTF-8"), "{e}");
        let e = parse("[1,2]").unwrap_err();
        assert!(e.to_string().contains("expected a JSON object"), "{e}");
        let e = parse("{\"id\":\"a\",\"text\":3,\"label\":1}").unwrap_err();
        assert!(e.to_string().contains("\"text\" must be a string, found 3"), "{e}");
    }

    #[test]
    fn long_lines_are_refused() {
        let long = format!("{{\"id\":\"a\",\"text\":\"{}\",\"label\":1}}", "x".repeat(MAX_LINE_BYTES));
        let e = parse(&long).unwrap_err();
        assert!(e.to_string().contains("over the limit"), "{e}");
    }

    #[test]
    fn a_huge_line_is_refused_without_reading_it_all() {
        // A reader that yields one endless line: the limit must stop it.
        struct Endless(u64);
        impl std::io::Read for Endless {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                self.0 += buf.len() as u64;
                assert!(self.0 < 64 << 20, "read far past the line limit");
                buf.fill(b'x');
                Ok(buf.len())
            }
        }
        let r = std::io::BufReader::new(Endless(0));
        let e = PromptSet::read("p", "p.jsonl", r, PromptFormat::labelled()).unwrap_err().to_string();
        assert!(e.contains("p.jsonl:1: line is over the limit of 4194304 bytes"), "{e}");
    }

    #[test]
    fn lines_are_split_across_buffer_boundaries() {
        let text = "{\"id\":\"a\",\"text\":\"x\",\"label\":1}\n{\"id\":\"b\",\"text\":\"y\",\"label\":0}";
        let r = std::io::BufReader::with_capacity(5, text.as_bytes());
        let s = PromptSet::read("p", "p.jsonl", r, PromptFormat::labelled()).unwrap();
        assert_eq!(s.texts(), vec!["x", "y"]);
        let e = PromptSet::read(
            "p",
            "p.jsonl",
            std::io::BufReader::with_capacity(5, &b"{\"id\":\"a\",\"text\":\"x\",\"label\":1}\n\n{\"a\xff"[..]),
            PromptFormat::labelled(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("p.jsonl:3: invalid UTF-8 at byte 3"), "{e}");
    }

    #[test]
    fn user_names_are_taken_or_refused_never_rewritten() {
        let s = parse("{\"id\":\"a\",\"text\":\"x\",\"label\":1}\n{\"id\":\"b\",\"text\":\"y\",\"label\":0}").unwrap();
        assert_eq!(s.clone().with_name("set-2.v1").unwrap().name, "set-2.v1");
        for bad in ["../evil", "..", "a/b", ".hidden", "", "a..b", "x y", "é"] {
            let e = s.clone().with_name(bad).unwrap_err().to_string();
            assert!(e.contains(&format!("{bad:?}")), "{e}");
        }
    }

    #[test]
    fn chat_prompts_are_parsed_checked_and_rendered() {
        let m = r#"[{"role":"system","content":"S"},{"role":"user","content":"Q"}]"#;
        let file =
            format!("{{\"id\":\"a\",\"messages\":{m},\"label\":1}}\n{{\"id\":\"b\",\"messages\":{m},\"label\":0}}");
        let s = parse(&file).unwrap();
        assert!(s.is_chat());
        assert_eq!(s.prompts[0].messages.as_ref().unwrap()[1], ChatMessage::new("user", "Q"));
        let e = s.check_rendered().unwrap_err().to_string();
        assert!(e.contains("\"a\" has chat messages that were not rendered"), "{e}");
        let r = s.render_chat(|ms| Ok(format!("<s>{}", ms.len()))).unwrap();
        assert_eq!(r.texts(), vec!["<s>2", "<s>2"]);
        assert_eq!(r.special_tokens, SpecialTokens::AsWritten);
        r.check_rendered().unwrap();
        let e = parse(&file).unwrap().render_chat(|_| Err(Error::invalid("x", "no"))).unwrap_err().to_string();
        assert!(e.contains("prompt \"a\""), "{e}");
        let plain =
            parse("{\"id\":\"a\",\"text\":\"x\",\"label\":1}\n{\"id\":\"b\",\"text\":\"y\",\"label\":0}").unwrap();
        assert_eq!(plain.clone().render_chat(|_| unreachable!()).unwrap(), plain, "plain texts stay as they are");
    }

    #[test]
    fn bad_chat_lines_are_refused_with_their_line() {
        let cases = [
            (r#"{"id":"a","text":"x","messages":[{"role":"user","content":"x"}],"label":1}"#, "p.jsonl:1: has both"),
            (r#"{"id":"a","messages":[],"label":1}"#, "p.jsonl:1: field \"messages\" is empty"),
            (r#"{"id":"a","messages":"hi","label":1}"#, "must be a list of messages"),
            (r#"{"id":"a","messages":[{"role":"bot","content":"x"}],"label":1}"#, "message #0 has role \"bot\""),
            (r#"{"id":"a","messages":[{"role":"user"}],"label":1}"#, "message #0 must be an object"),
            (
                "{\"id\":\"a\",\"text\":\"x\",\"label\":1}\n{\"id\":\"b\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"label\":0}",
                "p.jsonl:2: has \"messages\" but line 1 has \"text\"",
            ),
        ];
        for (file, want) in cases {
            let e = parse(file).unwrap_err().to_string();
            assert!(e.contains(want), "{file}: {e}");
        }
    }

    #[test]
    fn texts_format_defaults_ids() {
        let s = PromptSet::parse("p", "p.jsonl", b"{\"text\":\"x\"}\n{\"text\":\"y\"}", PromptFormat::texts()).unwrap();
        assert_eq!(s.prompts[0].id, "1");
        assert_eq!(s.prompts[1].id, "2");
        assert_eq!(s.prompts[0].label, None);
    }
}
