//! The Stream* list calls of cri-api 1.36 (KEP-5825, feature gate
//! CRIListStreaming): the same items as the unary List* call, sent in
//! several messages so that no message nears gRPC's size limit on a node
//! with thousands of containers.
//!
//! The api.proto contract: every item in exactly one message, no item twice,
//! EOF once all are sent; kubelet gathers the whole stream before it uses
//! any of it. The list is taken once, when the call arrives (a snapshot, as
//! the unary call's), and only the sending is spread out.

use std::pin::Pin;

use prost::Message;
use tonic::Status;

/// What one message of a streaming list carries at most, encoded: a quarter
/// of gRPC's default 4 MiB receive limit, so that a client with default
/// settings never refuses one. An item bigger than this goes alone.
pub const CHUNK_BYTES: usize = 1 << 20;

pub type Chunks<T> = Pin<Box<dyn futures::Stream<Item = Result<T, Status>> + Send>>;

/// `items` cut into runs of at most `budget` encoded bytes (at least one
/// item each), in order. No items: no runs (the stream is just EOF).
pub fn split<I: Message>(items: Vec<I>, budget: usize) -> Vec<Vec<I>> {
    let mut runs = Vec::new();
    let mut run = Vec::new();
    let mut size = 0;
    for item in items {
        // The repeated field's tag and length prefix come with each item.
        let len = item.encoded_len();
        let len = len + prost::length_delimiter_len(len) + 1;
        if !run.is_empty() && size + len > budget {
            runs.push(std::mem::take(&mut run));
            size = 0;
        }
        size += len;
        run.push(item);
    }
    if !run.is_empty() {
        runs.push(run);
    }
    runs
}

/// The response stream of a streaming list: one message per run.
pub fn stream<I, T>(items: Vec<I>, wrap: fn(Vec<I>) -> T) -> Chunks<T>
where
    I: Message + 'static,
    T: Send + 'static,
{
    let runs = split(items, CHUNK_BYTES);
    Box::pin(futures::stream::iter(
        runs.into_iter().map(move |r| Ok(wrap(r))),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_cri_api::v1 as cri;

    fn image(id: &str, tags: usize) -> cri::Image {
        cri::Image {
            id: id.to_string(),
            repo_tags: (0..tags).map(|i| format!("r/{id}:{i}")).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn every_item_once_in_order_and_no_message_over_budget() {
        let items: Vec<_> = (0..500)
            .map(|i| image(&format!("sha256:{i:064}"), 3))
            .collect();
        let want: Vec<String> = items.iter().map(|i| i.id.clone()).collect();
        let budget = 4096;
        let runs = split(items, budget);
        assert!(runs.len() > 1, "500 images must not fit in 4 KiB");
        for r in &runs {
            assert!(!r.is_empty());
            let msg = cri::StreamImagesResponse { images: r.clone() };
            assert!(msg.encoded_len() <= budget, "{} bytes", msg.encoded_len());
        }
        let got: Vec<String> = runs.into_iter().flatten().map(|i| i.id).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn an_item_bigger_than_the_budget_goes_alone() {
        let runs = split(vec![image("a", 1), image("big", 200), image("c", 1)], 256);
        let sizes: Vec<usize> = runs.iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![1, 1, 1]);
        assert_eq!(runs[1][0].id, "big");
    }

    #[test]
    fn nothing_to_list_is_no_message() {
        assert!(split(Vec::<cri::Image>::new(), CHUNK_BYTES).is_empty());
        let small = split(vec![image("a", 1), image("b", 1)], CHUNK_BYTES);
        assert_eq!(small.len(), 1, "a small list is one message");
    }
}
