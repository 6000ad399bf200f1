//! What a refused POST means, as pure logic: a POST refused with a
//! status that may be a verdict on its content (413, 400, 403, 422, ...)
//! is split in halves, each POSTed in turn, recursively, so the lines
//! the receiver takes go on in order and the ones it refuses are found.
//!
//! A line is judged refused (dropped from the webhook stream, not its
//! batch) only on evidence that the receiver refuses that line and not
//! everything: it refused the line alone, then took a later POST, then
//! refused the line alone once more. A receiver refusing everything
//! (a bad token answered with 403, a wrong path answered 404, a proxy)
//! takes nothing after the refusals, so nothing is dropped: the lines
//! refused since the last POST taken are handed back to be tried again
//! after a wait (`writer.rs` then POSTs them once, and if they are still
//! refused, hands them in as suspects without splitting them again, with
//! the lines queued since as parts). A receiver that starts taking POSTs
//! again in the middle takes the lines it refused on their second try
//! (after the lines taken meanwhile: the one case where lines arrive out
//! of order).
use std::collections::VecDeque;

use super::frame::LineRef;

/// The receiver's answer to one POST, once retries are done with
/// (`writer.rs` retries 5xx, 408, 429, 401, 407 and no answer itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// 2xx.
    Taken,
    /// A 4xx that may be a verdict on the content: this status.
    Refused(u16),
}

/// What a round of POSTs settled.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Round {
    /// Lines judged refused, with the status of their last refusal, in
    /// order.
    pub dropped: Vec<(LineRef, u16)>,
    /// Lines refused alone with no POST taken after them (the receiver
    /// may refuse everything): nothing is judged; try them again, in
    /// order, after a wait. Empty when every line was taken or dropped.
    pub tail: Vec<LineRef>,
    /// The status of the tail's last refusal; `None` when it is empty.
    pub status: Option<u16>,
}

/// POST `parts` in order with `post`, splitting refused POSTs in halves
/// down to single lines; judge the lines refused alone as the module
/// says. `suspects`: lines already refused alone, with nothing taken
/// since (a previous round's tail, which the writer found still refused),
/// judged like the ones this round finds.
pub fn round(
    mut suspects: Vec<(LineRef, u16)>,
    parts: Vec<Vec<LineRef>>,
    mut post: impl FnMut(&[LineRef]) -> Sent,
) -> Round {
    let mut todo: VecDeque<Vec<LineRef>> = parts.into();
    let mut dropped = Vec::new();
    while let Some(part) = todo.pop_front() {
        match post(&part) {
            Sent::Taken => confirm(&mut suspects, &mut dropped, &mut post),
            Sent::Refused(_) if part.len() > 1 => {
                let (a, b) = part.split_at(part.len() / 2);
                todo.push_front(b.to_vec());
                todo.push_front(a.to_vec());
            }
            Sent::Refused(status) => suspects.push((part[0], status)),
        }
    }
    Round {
        dropped,
        status: suspects.last().map(|s| s.1),
        tail: suspects.into_iter().map(|(l, _)| l).collect(),
    }
}

/// The receiver took a POST after refusing `suspects` alone: each is
/// POSTed alone once more; refused again, it is judged refused, taken,
/// it is delivered (the receiver changed its mind: it was not the line).
fn confirm(
    suspects: &mut Vec<(LineRef, u16)>,
    dropped: &mut Vec<(LineRef, u16)>,
    post: &mut impl FnMut(&[LineRef]) -> Sent,
) {
    for (line, _) in suspects.drain(..) {
        if let Sent::Refused(status) = post(&[line]) {
            dropped.push((line, status));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A receiver refusing the POSTs that carry any of `bad` lines with
    /// `status`; what it took, in order, and how many POSTs it got.
    struct Fake {
        bad: Vec<LineRef>,
        status: u16,
        taken: Vec<LineRef>,
        posts: usize,
        /// Refuse everything for the first this many POSTs.
        refuse_all_first: usize,
    }

    impl Fake {
        fn new(bad: &[LineRef], status: u16) -> Self {
            Fake {
                bad: bad.to_vec(),
                status,
                taken: vec![],
                posts: 0,
                refuse_all_first: 0,
            }
        }

        fn post(&mut self, part: &[LineRef]) -> Sent {
            self.posts += 1;
            if self.posts <= self.refuse_all_first || part.iter().any(|l| self.bad.contains(l)) {
                return Sent::Refused(self.status);
            }
            self.taken.extend_from_slice(part);
            Sent::Taken
        }
    }

    fn lines(n: usize) -> Vec<LineRef> {
        (0..n).map(|i| (i / 4, i % 4)).collect()
    }

    fn run(f: &mut Fake, parts: Vec<Vec<LineRef>>) -> Round {
        round(vec![], parts, |p| f.post(p))
    }

    #[test]
    fn a_refused_line_is_dropped_and_every_other_taken_in_order() {
        let all = lines(40);
        let bad = all[17];
        let mut f = Fake::new(&[bad], 403);
        let r = run(&mut f, vec![all.clone()]);
        assert_eq!(r.dropped, [(bad, 403)]);
        assert!(r.tail.is_empty() && r.status.is_none());
        let want: Vec<LineRef> = all.iter().copied().filter(|l| *l != bad).collect();
        assert_eq!(f.taken, want);
        // a search, not one POST per line
        assert!(f.posts < 20, "{} POSTs", f.posts);
    }

    #[test]
    fn neighbouring_refused_lines_at_either_end_are_dropped() {
        let all = lines(9);
        let bad = [all[0], all[1], all[8]];
        let mut f = Fake::new(&bad, 422);
        let parts = vec![all[..5].to_vec(), all[5..].to_vec()];
        let r = run(&mut f, parts);
        // the first two: a later POST was taken; the last: nothing after
        assert_eq!(r.dropped, [(all[0], 422), (all[1], 422)]);
        assert_eq!((r.tail.clone(), r.status), (vec![all[8]], Some(422)));
        assert_eq!(f.taken, all[2..8]);
        // tried again with lines queued since: judged then
        let r = run(&mut f, vec![vec![all[8], (9, 0), (9, 1)]]);
        assert_eq!(r.dropped, [(all[8], 422)]);
        assert!(r.tail.is_empty());
    }

    #[test]
    fn a_tail_still_refused_is_judged_by_the_lines_queued_since_without_a_new_split() {
        // a burst of refused lines filled a whole round: handed in as
        // suspects, judged once the receiver takes the lines after them
        let burst = lines(16);
        let mut f = Fake::new(&burst, 403);
        let suspects = burst.iter().map(|&l| (l, 403)).collect();
        let r = round(suspects, vec![vec![(9, 0), (9, 1)]], |p| f.post(p));
        assert_eq!(r.dropped.len(), 16);
        assert!(r.tail.is_empty());
        // the new part, then each suspect alone once
        assert_eq!(f.posts, 1 + 16);
        assert_eq!(f.taken, [(9, 0), (9, 1)]);
        // nothing queued since: still the tail, nothing posted
        let mut f = Fake::new(&burst, 403);
        let suspects = burst.iter().map(|&l| (l, 403)).collect();
        let r = round(suspects, vec![], |p| f.post(p));
        assert_eq!((r.tail, r.status, f.posts), (burst, Some(403), 0));
    }

    #[test]
    fn a_receiver_refusing_everything_gets_nothing_dropped() {
        let all = lines(12);
        let mut f = Fake::new(&[], 403);
        f.refuse_all_first = usize::MAX;
        let r = run(&mut f, vec![all[..6].to_vec(), all[6..].to_vec()]);
        assert!(r.dropped.is_empty());
        assert_eq!((r.tail, r.status), (all.clone(), Some(403)));
        assert!(f.taken.is_empty());
        // each split down to its lines once: 2n - 1 POSTs a part
        assert_eq!(f.posts, 2 * 6 - 1 + 2 * 6 - 1);
    }

    #[test]
    fn lines_refused_before_the_receiver_takes_posts_again_are_delivered() {
        // refuses everything (a bad token) for 12 POSTs, then is fixed:
        // the lines it refused alone meanwhile are taken on their second
        // try, none dropped
        let all = lines(8);
        let mut f = Fake::new(&[], 403);
        f.refuse_all_first = 12;
        let r = run(&mut f, vec![all.clone()]);
        assert!(r.dropped.is_empty(), "{:?}", r.dropped);
        assert!(r.tail.is_empty());
        let mut taken = f.taken.clone();
        taken.sort_unstable();
        assert_eq!(taken, all, "every line once");
    }

    #[test]
    fn a_413_line_follows_the_same_rule() {
        let all = lines(5);
        let mut f = Fake::new(&[all[2]], 413);
        let r = run(&mut f, vec![all.clone()]);
        assert_eq!(r.dropped, [(all[2], 413)]);
        assert_eq!(f.taken.len(), 4);
    }
}
