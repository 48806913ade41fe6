//! [`Rare`]: the attributes most events lack, behind one pointer.
//!
//! Events are moved by value through every stage of the twin (ingest, shard, asset, writer,
//! bus), and a city-scale run moves each of 144M readings about eight times. Seven optional
//! attributes (`subject`, `datacontenttype`, `dataschema`, `correlationid`, `causationid`,
//! `region` and user extensions) took 168 of an event's 376 bytes inline while a reading has
//! none of them. Behind a [`Rare`] they take 8 bytes until one is set.

use std::fmt;

/// A value of `T` that is usually empty, stored behind a pointer only once set.
///
/// It reads as a `T` (the shared empty one when unset, without allocating) and writes as one
/// (a write makes room first). Equality is the `T`'s, so an emptied value equals an unset one.
#[derive(Clone, Default)]
pub struct Rare<T>(Option<Box<T>>);

/// A type with a shared empty value, for [`Rare`].
pub trait Empty: Default + PartialEq + 'static {
    /// The empty value.
    const EMPTY: &'static Self;
}

impl<T: Empty> Rare<T> {
    /// A value; nothing is allocated when it is empty.
    pub fn new(value: T) -> Self {
        if value == *T::EMPTY { Rare(None) } else { Rare(Some(Box::new(value))) }
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.0.as_deref().is_none_or(|value| value == T::EMPTY)
    }
}

impl<T: Empty> std::ops::Deref for Rare<T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.0.as_deref().unwrap_or(T::EMPTY)
    }
}

impl<T: Empty> std::ops::DerefMut for Rare<T> {
    fn deref_mut(&mut self) -> &mut T {
        self.0.get_or_insert_with(Box::default)
    }
}

impl<T: Empty> PartialEq for Rare<T> {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl<T: Empty + fmt::Debug> fmt::Debug for Rare<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        (**self).fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, PartialEq)]
    struct Two {
        a: Option<String>,
        b: Option<u32>,
    }

    impl Empty for Two {
        const EMPTY: &'static Self = &Two { a: None, b: None };
    }

    #[test]
    fn reads_as_empty_until_written_and_an_emptied_value_equals_an_unset_one() {
        let mut rare = Rare::<Two>::default();
        assert!(rare.is_empty() && rare.a.is_none());
        assert!(Rare::new(Two::default()).0.is_none(), "an empty value allocates nothing");
        rare.a = Some("x".into());
        assert_eq!(rare.a.as_deref(), Some("x"));
        assert_ne!(rare, Rare::default());
        assert_eq!(rare, Rare::new(Two { a: Some("x".into()), b: None }));
        rare.a = None;
        assert!(rare.is_empty());
        assert_eq!(rare, Rare::default(), "emptied equals unset");
        assert_eq!(format!("{rare:?}"), format!("{:?}", Two::default()));
    }
}
