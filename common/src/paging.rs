//! Paged listings (`ReadDir`, `GetBlocks`, `ListBlocks`, a chunk server's `List`), walked in
//! one way: a closure fetches the page after a cursor and says where the next one starts.

use std::future::Future;

/// The pages of one listing, fetched one at a time by [`Pager::next`].
pub struct Pager<C, F> {
    /// Where the next page starts; `None` once the last page was fetched (or a fetch failed).
    next: Option<C>,
    fetch: F,
}

impl<C, T, E, F, Fut> Pager<C, F>
where
    F: FnMut(C) -> Fut,
    Fut: Future<Output = Result<(Vec<T>, Option<C>), E>>,
{
    /// Start at `first`; `fetch(after)` returns one page and the cursor of the next (`None`:
    /// this was the last page, see [`next_after`]).
    pub fn new(first: C, fetch: F) -> Self {
        Pager { next: Some(first), fetch }
    }

    /// The next page; `None` after the last one, or after an error (returned once).
    pub async fn next(&mut self) -> Option<Result<Vec<T>, E>> {
        let after = self.next.take()?;
        Some((self.fetch)(after).await.map(|(items, next)| {
            self.next = next;
            items
        }))
    }

    /// Every item of every page.
    pub async fn collect(mut self) -> Result<Vec<T>, E> {
        let mut all = Vec::new();
        while let Some(page) = self.next().await {
            all.extend(page?);
        }
        Ok(all)
    }
}

/// The cursor after a page of a listing that returns up to `limit` items and fewer only at its
/// end: the key of the last item of a full page, `None` after a short one.
pub fn next_after<T, C>(items: &[T], limit: impl Into<u64>, key: impl FnOnce(&T) -> C) -> Option<C> {
    if (items.len() as u64) < limit.into() {
        return None;
    }
    items.last().map(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A listing of 0..n, `limit` at a time after a cursor.
    async fn page(n: u32, limit: u32, after: Option<u32>) -> Result<(Vec<u32>, Option<Option<u32>>), String> {
        let start = after.map_or(0, |a| a + 1);
        let items: Vec<u32> = (start..n).take(limit as usize).collect();
        let next = next_after(&items, limit, |x| Some(*x));
        Ok((items, next))
    }

    #[tokio::test]
    async fn every_item_once_whatever_the_page_size() {
        for (n, limit) in [(0, 4), (3, 4), (4, 4), (9, 4), (100, 1)] {
            let all = Pager::new(None, |after| page(n, limit, after)).collect().await.unwrap();
            assert_eq!(all, (0..n).collect::<Vec<_>>(), "n {n} limit {limit}");
        }
    }

    #[tokio::test]
    async fn an_error_ends_the_listing() {
        let mut calls = 0;
        let mut p = Pager::new(0u32, |after| {
            calls += 1;
            async move { if after == 0 { Ok((vec![1, 2], Some(2))) } else { Err("gone") } }
        });
        assert_eq!(p.next().await, Some(Ok(vec![1, 2])));
        assert_eq!(p.next().await, Some(Err("gone")));
        assert_eq!(p.next().await, None);
        drop(p);
        assert_eq!(calls, 2);
    }
}
