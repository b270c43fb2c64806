//! One Server-Sent Events message and its wire encoding.
//!
//! The encoder makes field injection impossible. It removes CR and LF from
//! the `id` and `event` values and writes the data as one `data:` line per
//! line of its text. No payload can therefore end a field early, add a field
//! or dispatch a second event.

use bytes::Bytes;

/// One message, encoded once and shared by every client that receives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SseMessage {
    /// Event id, the value of the `id:` field, with CR, LF and NUL removed.
    pub id: Option<String>,
    /// Event name, the value of the `event:` field, with CR and LF removed.
    /// An empty name omits the field, so browsers dispatch a `message`
    /// event.
    pub event: String,
    /// Event data as text, usually JSON.
    pub data: String,
    /// The encoded message. Changing the public fields does not update it.
    bytes: Bytes,
}

impl SseMessage {
    /// Encodes a message.
    pub fn new(id: Option<String>, event: &str, data: String) -> Self {
        MessageBody::new(event, data).into_message(id)
    }

    /// Returns the encoded message, ending with the blank line that
    /// dispatches it.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }
}

/// The `event:` and `data:` part of a message, encoded before its id is
/// known, so that the hub holds its lock only to add the id.
pub(super) struct MessageBody {
    event: String,
    data: String,
    encoded: String,
}

impl MessageBody {
    pub(super) fn new(event: &str, data: String) -> Self {
        let event = remove_chars(event, &['\r', '\n']);
        let mut encoded = String::with_capacity(event.len() + data.len() + 16);

        if !event.is_empty() {
            encoded.push_str("event: ");
            encoded.push_str(&event);
            encoded.push('\n');
        }
        // At least one `data:` line is always written, because browsers
        // dispatch no event whose data field is missing.
        for line in data_lines(&data) {
            encoded.push_str("data: ");
            encoded.push_str(line);
            encoded.push('\n');
        }
        encoded.push('\n');

        Self {
            event,
            data,
            encoded,
        }
    }

    pub(super) fn into_message(self, id: Option<String>) -> SseMessage {
        // Browsers ignore an `id:` field that contains NUL, so it is removed
        // along with the line breaks.
        let id = id.map(|id| remove_chars(&id, &['\r', '\n', '\0']));
        let mut encoded = String::with_capacity(self.encoded.len() + 32);

        if let Some(id) = &id {
            encoded.push_str("id: ");
            encoded.push_str(id);
            encoded.push('\n');
        }
        encoded.push_str(&self.encoded);

        SseMessage {
            id,
            event: self.event,
            data: self.data,
            bytes: Bytes::from(encoded),
        }
    }
}

fn remove_chars(text: &str, removed: &[char]) -> String {
    text.chars().filter(|c| !removed.contains(c)).collect()
}

/// Splits `text` at every CRLF, CR and LF, the three line endings of the
/// event stream format. Text that ends with a line ending yields an empty
/// last line, so the line ending is preserved in the data a browser receives.
fn data_lines(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(text);
    std::iter::from_fn(move || {
        let current = rest?;
        match current.find(['\r', '\n']) {
            None => {
                rest = None;
                Some(current)
            }
            Some(end) => {
                let ending = if current[end..].starts_with("\r\n") {
                    2
                } else {
                    1
                };
                rest = Some(&current[end + ending..]);
                Some(&current[..end])
            }
        }
    })
}
