//! The agent's enforcement maps, reached by name from outside the agent,
//! to check the kernel half of kill-at-exec and deny-connect on a kernel
//! where no container runtime runs: the entry is the one the agent would
//! write for a container's cgroup (same key type, `agent_common`).
use agent_common::{enforce, ConnectRuleKey, ExecRuleKey};
use aya::maps::{loaded_maps, lpm_trie::Key, Array, LpmTrie, Map, MapData};

/// The newest loaded map called `name` (the agent just started).
fn newest(name: &str) -> Map {
    let id = loaded_maps()
        .filter_map(Result::ok)
        .filter(|m| m.name_as_str() == Some(name))
        .map(|m| m.id())
        .max()
        .unwrap_or_else(|| panic!("no loaded BPF map named {name}: is the agent running?"));
    let data = MapData::from_id(id).unwrap_or_else(|e| panic!("open map {name} ({id}): {e}"));
    Map::from_map_data(data).unwrap_or_else(|e| panic!("map {name}: {e}"))
}

/// Turn on an enforcement table's switch (`agent_common::enforce`).
fn switch_on(bit: u32) {
    let mut flags: Array<MapData, u32> = newest("ENFORCE").try_into().expect("ENFORCE array");
    let now = flags.get(&0, 0).unwrap_or(0);
    flags.set(0, now | bit, 0).expect("write ENFORCE");
}

/// Kill any exec of exactly `path` in cgroup `cgroup_id`.
pub fn kill_exec(cgroup_id: u64, path: &str) {
    let mut m: LpmTrie<MapData, ExecRuleKey, u32> =
        newest("EXEC_KILL").try_into().expect("EXEC_KILL trie");
    let (bits, key) = ExecRuleKey::new(cgroup_id, path.as_bytes()).expect("short path");
    m.insert(&Key::new(bits, key), 1, 0)
        .expect("write EXEC_KILL");
    switch_on(enforce::EXEC_KILL);
}

/// Refuse connects to `addr` (IPv6 or IPv4-mapped, /128) from `cgroup_id`.
pub fn deny_connect(cgroup_id: u64, addr: [u8; 16]) {
    let mut m: LpmTrie<MapData, ConnectRuleKey, u32> = newest("CONNECT_DENY")
        .try_into()
        .expect("CONNECT_DENY trie");
    let (bits, key) = ConnectRuleKey::new(cgroup_id, addr, 128);
    m.insert(&Key::new(bits, key), 1, 0)
        .expect("write CONNECT_DENY");
    switch_on(enforce::CONNECT_DENY);
}
