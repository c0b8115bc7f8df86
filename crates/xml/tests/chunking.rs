//! Where the reads split a stream must not change what the framer makes of it:
//! the same frames (white space runs aside, which are returned as they arrive)
//! and the same error, whether the input comes whole, byte by byte, split at any
//! one position, or in random pieces.
#![allow(clippy::unwrap_used)]

mod support;

use proptest::prelude::*;
use support::corpus::corpus;
use support::{feed_with_cuts, message_with_text, traffic, Outcome, LIMITS};
use xmppwall_xml::{Error, Token};

/// Frames with consecutive white space runs merged, and the error.
fn normalized(outcome: Outcome) -> (Vec<(Token, Vec<u8>)>, Option<Error>) {
    let mut frames: Vec<(Token, Vec<u8>)> = Vec::new();
    for (token, bytes) in outcome.frames {
        match frames.last_mut() {
            Some((Token::Whitespace, last)) if token == Token::Whitespace => last.extend(bytes),
            _ => frames.push((token, bytes)),
        }
    }
    (frames, outcome.error)
}

fn whole(input: &[u8]) -> (Vec<(Token, Vec<u8>)>, Option<Error>) {
    normalized(feed_with_cuts(LIMITS, input, &[]))
}

#[test]
fn every_single_split_gives_the_same_frames_as_whole_input() {
    for input in corpus() {
        let expected = whole(&input);
        for cut in 0..=input.len() {
            let got = normalized(feed_with_cuts(LIMITS, &input, &[cut]));
            assert_eq!(
                got,
                expected,
                "split at {cut} of {:?}",
                String::from_utf8_lossy(&input)
            );
        }
    }
}

#[test]
fn byte_by_byte_gives_the_same_frames_as_whole_input() {
    let mut inputs = corpus();
    inputs.push(traffic::stream(3, 64 * 1024));
    for input in inputs {
        let cuts: Vec<usize> = (1..input.len()).collect();
        assert_eq!(
            normalized(feed_with_cuts(LIMITS, &input, &cuts)),
            whole(&input),
            "{:?}",
            String::from_utf8_lossy(&input)
        );
    }
}

#[test]
fn realistic_traffic_is_accepted_whole() {
    let input = traffic::stream(11, 1 << 20);
    let (frames, error) = whole(&input);
    assert_eq!(error, None);
    assert_eq!(frames.first().map(|f| f.0), Some(Token::XmlDeclaration));
    assert_eq!(frames.last().map(|f| f.0), Some(Token::StreamClose));
    assert_eq!(frames.iter().map(|f| f.1.len()).sum::<usize>(), input.len());
}

/// Ascending cut positions within `len`.
fn cuts(len: usize) -> impl Strategy<Value = Vec<usize>> {
    proptest::collection::vec(0..=len, 0..40).prop_map(|mut v| {
        v.sort_unstable();
        v
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_pieces_of_the_corpus_give_the_same_frames(
        (input, cuts) in proptest::sample::select(corpus()).prop_flat_map(|i| { let n = i.len(); (Just(i), cuts(n)) })
    ) {
        prop_assert_eq!(normalized(feed_with_cuts(LIMITS, &input, &cuts)), whole(&input));
    }

    #[test]
    fn random_pieces_of_realistic_traffic_give_the_same_frames(
        seed in any::<u64>(),
        cuts in cuts(48 * 1024),
    ) {
        let input = traffic::stream(seed, 32 * 1024);
        prop_assert_eq!(normalized(feed_with_cuts(LIMITS, &input, &cuts)), whole(&input));
    }

    /// Character data is checked in bulk up to the next `<` when that is in the
    /// bytes, and the exact way when it is not: byte by byte, a text is never
    /// checked in bulk, so both ways must give the same frames and error.
    #[test]
    fn text_checked_in_bulk_gives_what_byte_by_byte_gives(
        pieces in proptest::collection::vec(any::<usize>(), 0..48),
    ) {
        let input = message_with_text(&pieces);
        let cuts: Vec<usize> = (1..input.len()).collect();
        prop_assert_eq!(normalized(feed_with_cuts(LIMITS, &input, &cuts)), whole(&input));
    }

    #[test]
    fn random_pieces_of_random_bytes_give_the_same_outcome(
        tail in proptest::collection::vec(any::<u8>(), 0..64),
        cuts in cuts(400),
    ) {
        let mut input = support::corpus::HEADER.as_bytes().to_vec();
        input.extend(tail);
        prop_assert_eq!(normalized(feed_with_cuts(LIMITS, &input, &cuts)), whole(&input));
    }
}
