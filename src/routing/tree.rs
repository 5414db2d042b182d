//! The network as a graph of nations, and delivery trees over it: sets of
//! nations as bitsets, breadth-first shortest paths with one tie-break that
//! every node applies alike, and what one node forwards to in a tree.

use std::collections::BTreeSet;

use crate::label::Nation;
use crate::policy::Policy;

/// The most nations a network may hold: a [`NationSet`] is one `u128`.
pub const MAX_NATIONS: usize = 128;

/// A set of nations of one network, by their index in [`Nations`].
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, Debug)]
pub struct NationSet(u128);

impl NationSet {
    /// Whether the nation at `index` is in the set.
    pub fn contains(self, index: usize) -> bool {
        index < MAX_NATIONS && self.0 & (1 << index) != 0
    }

    /// Adds the nation at `index`; indices past [`MAX_NATIONS`] are ignored.
    pub fn insert(&mut self, index: usize) {
        if index < MAX_NATIONS {
            self.0 |= 1 << index;
        }
    }

    /// Removes the nation at `index`.
    pub fn remove(&mut self, index: usize) {
        if index < MAX_NATIONS {
            self.0 &= !(1 << index);
        }
    }

    /// Whether the two sets share a nation.
    pub fn intersects(self, other: NationSet) -> bool {
        self.0 & other.0 != 0
    }

    /// The intersection.
    pub fn and(self, other: NationSet) -> NationSet {
        NationSet(self.0 & other.0)
    }

    /// The nations of `self` not in `other`.
    pub fn minus(self, other: NationSet) -> NationSet {
        NationSet(self.0 & !other.0)
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The indices in the set, lowest first.
    pub fn iter(self) -> impl Iterator<Item = usize> {
        let mut bits = self.0;
        std::iter::from_fn(move || {
            if bits == 0 {
                return None;
            }
            let index = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            Some(index)
        })
    }
}

/// The nations of a network in code order; a nation's position is its
/// index in every [`NationSet`], so the order (and with it every
/// tie-break) is the same at every node.
#[derive(Clone, Debug, Default)]
pub struct Nations(Vec<Nation>);

impl Nations {
    /// The nations of `policy`, at most [`MAX_NATIONS`].
    pub fn of(policy: &Policy) -> Nations {
        // BTreeMap keys are sorted; validation caps their number.
        Nations(policy.nations().keys().copied().take(MAX_NATIONS).collect())
    }

    /// The index of `nation`; `None` if it is not in the network.
    pub fn index(&self, nation: Nation) -> Option<usize> {
        self.0.binary_search(&nation).ok()
    }

    /// The nation at `index`; panics if `index` is out of range.
    pub fn nation(&self, index: usize) -> Nation {
        self.0[index]
    }

    /// How many nations the network holds.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the network holds no nations.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The set of these nations; nations not in the network are left out.
    pub fn set_of(&self, nations: impl IntoIterator<Item = Nation>) -> NationSet {
        let mut set = NationSet::default();
        for nation in nations {
            if let Some(index) = self.index(nation) {
                set.insert(index);
            }
        }
        set
    }

    /// The nations of `set`, in index order.
    pub fn names(&self, set: NationSet) -> Vec<Nation> {
        set.iter()
            .filter(|&i| i < self.0.len())
            .map(|i| self.0[i])
            .collect()
    }
}

/// Undirected links between nations, as one neighbour set per nation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Graph {
    neighbours: Vec<NationSet>,
}

impl Graph {
    /// A graph of `nations` nations with no links.
    pub fn empty(nations: usize) -> Graph {
        Graph {
            neighbours: vec![NationSet::default(); nations],
        }
    }

    /// The links of the network file.
    pub fn configured(policy: &Policy, nations: &Nations) -> Graph {
        let mut graph = Graph::empty(nations.len());
        for (&nation, nation_policy) in policy.nations() {
            for &peer in &nation_policy.peers {
                if let (Some(a), Some(b)) = (nations.index(nation), nations.index(peer)) {
                    graph.link(a, b);
                }
            }
        }
        graph
    }

    /// Adds the link between `a` and `b`; self-links and unknown indices are
    /// ignored.
    pub fn link(&mut self, a: usize, b: usize) {
        if a != b && a < self.neighbours.len() && b < self.neighbours.len() {
            self.neighbours[a].insert(b);
            self.neighbours[b].insert(a);
        }
    }

    /// The nations linked to the nation at `index`.
    pub fn neighbours(&self, index: usize) -> NationSet {
        self.neighbours.get(index).copied().unwrap_or_default()
    }

    /// The links as pairs, lower index first.
    pub fn links(&self) -> BTreeSet<(usize, usize)> {
        let mut links = BTreeSet::new();
        for (a, neighbours) in self.neighbours.iter().enumerate() {
            for b in neighbours.iter().filter(|&b| b > a) {
                links.insert((a, b));
            }
        }
        links
    }

    /// Shortest paths from `root` over links whose both ends are in
    /// `allowed`. Breadth first, visiting neighbours in index order, and
    /// a nation's parent is the first that reaches it: so every node that
    /// knows the same links computes the same tree.
    pub fn shortest_paths(&self, root: usize, allowed: NationSet) -> PathTree {
        let n = self.neighbours.len();
        let mut parent = vec![None; n];
        let mut reached = NationSet::default();
        if root >= n || !allowed.contains(root) {
            return PathTree {
                root,
                parent,
                reached,
            };
        }
        reached.insert(root);
        let mut queue = std::collections::VecDeque::from([root]);
        while let Some(at) = queue.pop_front() {
            for next in self.neighbours[at].and(allowed).minus(reached).iter() {
                reached.insert(next);
                parent[next] = Some(at);
                queue.push_back(next);
            }
        }
        PathTree {
            root,
            parent,
            reached,
        }
    }
}

/// Breadth-first shortest paths from one root.
#[derive(Clone, Debug)]
pub struct PathTree {
    root: usize,
    parent: Vec<Option<usize>>,
    reached: NationSet,
}

impl PathTree {
    /// Every nation the tree reaches, the root included.
    pub fn reached(&self) -> NationSet {
        self.reached
    }

    /// The parent of the nation at `index`; `None` for the root and for
    /// nations not reached.
    pub fn parent(&self, index: usize) -> Option<usize> {
        self.parent.get(index).copied().flatten()
    }

    /// The path from the root to `index`, both included; `None` if the
    /// tree does not reach it.
    pub fn path(&self, index: usize) -> Option<Vec<usize>> {
        if !self.reached.contains(index) {
            return None;
        }
        let mut path = vec![index];
        let mut at = index;
        while at != self.root {
            at = self.parent(at)?;
            path.push(at);
        }
        path.reverse();
        Some(path)
    }

    /// What the node at `me` forwards to in this tree: each child with
    /// every nation whose path goes through it.
    pub fn branches(&self, me: usize) -> Vec<Branch> {
        let mut branches: Vec<Branch> = Vec::new();
        for target in self.reached.iter() {
            // Walk up from the target; the step below `me` is the child.
            let mut at = target;
            while let Some(up) = self.parent(at) {
                if up == me {
                    match branches.iter_mut().find(|b| b.child == at) {
                        Some(branch) => branch.beyond.insert(target),
                        None => {
                            let mut beyond = NationSet::default();
                            beyond.insert(target);
                            branches.push(Branch { child: at, beyond });
                        }
                    }
                    break;
                }
                at = up;
            }
        }
        branches.sort_by_key(|b| b.child);
        branches
    }
}

/// One child of a node in a tree, and the nations reached through it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Branch {
    /// The child's index.
    pub child: usize,
    /// The nations reached through the child, itself included.
    pub beyond: NationSet,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn set(indices: &[usize]) -> NationSet {
        let mut s = NationSet::default();
        for &i in indices {
            s.insert(i);
        }
        s
    }

    #[test]
    fn sets_hold_what_was_put_in() {
        let mut s = set(&[0, 5, 127]);
        assert!(s.contains(0) && s.contains(5) && s.contains(127));
        assert!(!s.contains(1) && !s.contains(128));
        assert_eq!(s.iter().collect::<Vec<_>>(), [0, 5, 127]);
        s.remove(5);
        assert_eq!(s.iter().collect::<Vec<_>>(), [0, 127]);
        assert!(s.minus(set(&[0, 127])).is_empty());
    }

    #[test]
    fn ties_go_to_the_lowest_index() {
        // A square 0-1-3, 0-2-3: node 3 is two hops away either way.
        let mut g = Graph::empty(4);
        g.link(0, 1);
        g.link(0, 2);
        g.link(1, 3);
        g.link(2, 3);
        let tree = g.shortest_paths(0, set(&[0, 1, 2, 3]));
        assert_eq!(tree.path(3), Some(vec![0, 1, 3]));
        let branches = tree.branches(0);
        assert_eq!(
            branches,
            [
                Branch {
                    child: 1,
                    beyond: set(&[1, 3])
                },
                Branch {
                    child: 2,
                    beyond: set(&[2])
                }
            ]
        );
        // Without 1, the path goes through 2.
        let tree = g.shortest_paths(0, set(&[0, 2, 3]));
        assert_eq!(tree.path(3), Some(vec![0, 2, 3]));
        assert_eq!(tree.path(1), None);
    }

    fn arb_graph() -> impl Strategy<Value = (Graph, NationSet, usize)> {
        (2usize..10).prop_flat_map(|n| {
            (
                proptest::collection::vec(any::<bool>(), n * n),
                proptest::collection::vec(any::<bool>(), n),
                0..n,
            )
                .prop_map(move |(links, allowed, root)| {
                    let mut g = Graph::empty(n);
                    for a in 0..n {
                        for b in a + 1..n {
                            if links[a * n + b] {
                                g.link(a, b);
                            }
                        }
                    }
                    let mut allowed_set = NationSet::default();
                    for (i, &yes) in allowed.iter().enumerate() {
                        if yes || i == root {
                            allowed_set.insert(i);
                        }
                    }
                    (g, allowed_set, root)
                })
        })
    }

    proptest! {
        /// Every path runs over real links between allowed nations, is as
        /// short as any (checked against a plain distance computation),
        /// and the branches of all nodes partition the reached nations.
        #[test]
        fn paths_are_shortest_and_stay_inside((graph, allowed, root) in arb_graph()) {
            let n = graph.neighbours.len();
            let tree = graph.shortest_paths(root, allowed);
            // Distances by relaxation, independent of the BFS above.
            let mut dist = vec![usize::MAX; n];
            dist[root] = 0;
            for _ in 0..n {
                for a in 0..n {
                    for b in graph.neighbours(a).iter() {
                        if allowed.contains(a) && allowed.contains(b) && dist[a] != usize::MAX {
                            dist[b] = dist[b].min(dist[a] + 1);
                        }
                    }
                }
            }
            for (v, &distance) in dist.iter().enumerate() {
                match tree.path(v) {
                    Some(path) => {
                        prop_assert_eq!(path.len() - 1, distance);
                        for pair in path.windows(2) {
                            prop_assert!(graph.neighbours(pair[0]).contains(pair[1]));
                            prop_assert!(allowed.contains(pair[0]) && allowed.contains(pair[1]));
                        }
                    }
                    None => prop_assert_eq!(distance, usize::MAX),
                }
            }
            // Each reached nation but the root is beyond exactly one child
            // of its parent: a message reaches it once.
            for v in tree.reached().iter().filter(|&v| v != root) {
                let parent = tree.parent(v).unwrap();
                let holding: Vec<_> = tree.branches(parent).into_iter().filter(|b| b.beyond.contains(v)).collect();
                prop_assert_eq!(holding.len(), 1);
                prop_assert_eq!(holding[0].child, v);
            }
        }
    }
}
