//! Every error inside a candle error, so that a meter can recognise its device's
//! out-of-memory status however deep it is wrapped.
//!
//! candle wraps errors several ways: `WithBacktrace`, `Context` and `WithPath` hold another
//! candle error; `Cuda` and `WrappedContext` hold a boxed foreign error (cudarc's, or
//! anything a `Context` call wrapped), whose own `source()` chain may hold more, a candle
//! error among them. `Wrapped` holds only something printable: nothing inside it can be
//! recognised, so maxbatch never wraps a candle error that way (see
//! [`Error::into_candle`](crate::Error::into_candle)).

use std::error::Error as StdError;

/// `error` and every error inside it, outermost first.
pub fn chain(error: &candle_core::Error) -> Vec<&(dyn StdError + 'static)> {
    let mut found = Vec::new();
    visit(error, &mut found);
    found
}

fn visit<'a>(error: &'a candle_core::Error, found: &mut Vec<&'a (dyn StdError + 'static)>) {
    use candle_core::Error as E;
    found.push(error);
    match error {
        E::WithBacktrace { inner, .. } | E::Context { inner, .. } | E::WithPath { inner, .. } => {
            visit(inner, found)
        }
        E::Cuda(boxed) => foreign(boxed.as_ref(), found),
        E::WrappedContext { wrapped, .. } => foreign(wrapped.as_ref(), found),
        _ => {}
    }
}

/// A boxed error and its `source()` chain; a candle error met on the way is opened like
/// the outer one.
fn foreign<'a>(error: &'a (dyn StdError + 'static), found: &mut Vec<&'a (dyn StdError + 'static)>) {
    let mut next = Some(error);
    while let Some(error) = next {
        if let Some(candle) = error.downcast_ref::<candle_core::Error>() {
            visit(candle, found);
            return;
        }
        found.push(error);
        next = error.source();
    }
}

/// The first error inside `error` (itself included) that `find` recognises.
pub fn find_in<T>(
    error: &candle_core::Error,
    find: impl Fn(&(dyn StdError + 'static)) -> Option<T>,
) -> Option<T> {
    chain(error).into_iter().find_map(find)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Context;

    /// A device's status, as a CUDA library error would carry it.
    #[derive(Debug, thiserror::Error)]
    #[error("status {0}")]
    struct Status(u32);

    /// A foreign error that carries another as its source.
    #[derive(Debug, thiserror::Error)]
    #[error("while loading a module")]
    struct Loading(#[source] Status);

    fn status(error: &candle_core::Error) -> Option<u32> {
        find_in(error, |e| e.downcast_ref::<Status>().map(|s| s.0))
    }

    #[test]
    fn a_status_is_found_however_it_is_wrapped() {
        let cuda = || candle_core::Error::Cuda(Box::new(Status(2)));
        assert_eq!(status(&cuda()), Some(2));
        assert_eq!(status(&cuda().bt().context("in matmul").bt()), Some(2));
        assert_eq!(status(&cuda().with_path("model.bin")), Some(2));
        // A boxed error's own source chain.
        let loading = candle_core::Error::Cuda(Box::new(Loading(Status(2))));
        assert_eq!(status(&loading), Some(2));
        // `Context::context` on a foreign result: WrappedContext.
        let wrapped: candle_core::Result<()> = Err(Status(2)).context("casting the weights");
        assert_eq!(status(&wrapped.unwrap_err()), Some(2));
        // A candle error boxed inside a foreign one's place.
        let nested: candle_core::Result<()> = Err(cuda()).context("rebuilding the model");
        assert_eq!(status(&nested.unwrap_err()), Some(2));
    }

    #[test]
    fn nothing_is_found_where_nothing_typed_is_held() {
        assert_eq!(status(&candle_core::Error::Msg("status 2".into())), None);
        // `Error::wrap` keeps only text: why maxbatch never wraps a candle error with it.
        assert_eq!(status(&candle_core::Error::wrap(Status(2))), None);
    }
}
