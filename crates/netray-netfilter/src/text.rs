//! Cheap references into kept source text.

use std::sync::Arc;

/// A slice of a kept source (a dump's text), cheap to clone; derefs to `str`.
#[derive(Clone)]
pub struct Text {
    src: Arc<str>,
    start: u32,
    end: u32,
}

impl Text {
    /// A slice `start..end` of `src` (must be on char boundaries).
    pub(crate) fn new(src: &Arc<str>, start: usize, end: usize) -> Text {
        debug_assert!(src.is_char_boundary(start) && src.is_char_boundary(end));
        Text {
            src: src.clone(),
            start: start as u32,
            end: end as u32,
        }
    }

    /// A text that owns its own string.
    pub fn owned(s: &str) -> Text {
        let src: Arc<str> = Arc::from(s);
        let end = src.len() as u32;
        Text { src, start: 0, end }
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.src[self.start as usize..self.end as usize]
    }
}

impl std::ops::Deref for Text {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl std::fmt::Debug for Text {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl std::fmt::Display for Text {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq for Text {
    fn eq(&self, other: &Text) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Text {}

impl serde::Serialize for Text {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}
