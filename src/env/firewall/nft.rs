//! The nft rules (iptables not installed): the script that makes the
//! table, its output chain and the rule in one transaction, and the check
//! of `nft --json` output, expression by expression.

use std::net::Ipv4Addr;

use super::{FirewallError, RulesState};
use crate::os::{Cmd, Env};

/// The nft table, named as waagent names it.
pub const NFT_TABLE: &str = "walinuxagent";

/// The nft script that makes the table, its output chain and the rule, in
/// one transaction.
pub fn nft_script(ip: Ipv4Addr, uid: u32) -> String {
    format!(
        "add table ip {NFT_TABLE}\n\
         add chain ip {NFT_TABLE} output {{ type filter hook output priority 0 ; policy accept ; }}\n\
         add rule ip {NFT_TABLE} output ip daddr {ip} tcp dport != 53 skuid != {uid} ct state invalid,new counter drop\n"
    )
}

/// Whether our table holds our rule: absent without the table, partial
/// (with what is wrong) when its rule is not exactly ours.
pub(super) fn nft_check(env: &Env, ip: Ipv4Addr, uid: u32) -> Result<RulesState, FirewallError> {
    let run = |args: &[&str]| -> Result<serde_json::Value, FirewallError> {
        let cmd = Cmd::new("nft").args(args.iter().copied());
        let out = env.runner.run_ok(&cmd)?;
        serde_json::from_str(&out.stdout).map_err(|e| {
            FirewallError::Output(format!(
                "cannot parse the output of `{}`: {e}",
                cmd.display()
            ))
        })
    };
    if !nft_has_table(&run(&["--json", "list", "tables"])?) {
        return Ok(RulesState::Absent);
    }
    let table = run(&["--json", "list", "table", NFT_TABLE])?;
    Ok(match nft_rule_problems(&table, ip, uid) {
        problems if problems.is_empty() => RulesState::Complete,
        problems => RulesState::Partial(problems.join("; ")),
    })
}

/// The items of `nft --json` output.
fn nft_items(v: &serde_json::Value) -> &[serde_json::Value] {
    v.get("nftables")
        .and_then(serde_json::Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// Whether `nft --json list tables` lists ours.
fn nft_has_table(v: &serde_json::Value) -> bool {
    nft_items(v)
        .iter()
        .filter_map(|i| i.get("table"))
        .any(|t| t.get("name").and_then(serde_json::Value::as_str) == Some(NFT_TABLE))
}

/// What is wrong with our table in `nft --json list table walinuxagent`;
/// nothing when it holds exactly our one rule.
fn nft_rule_problems(v: &serde_json::Value, ip: Ipv4Addr, uid: u32) -> Vec<String> {
    use serde_json::json;
    let rules: Vec<&serde_json::Value> =
        nft_items(v).iter().filter_map(|i| i.get("rule")).collect();
    if rules.len() != 1 {
        return vec![format!(
            "table {NFT_TABLE} should hold exactly one rule, not {}",
            rules.len()
        )];
    }
    let rule = rules[0];
    let ours = rule.get("family") == Some(&json!("ip"))
        && rule.get("table") == Some(&json!(NFT_TABLE))
        && rule.get("chain") == Some(&json!("output"));
    let Some(expr) = rule
        .get("expr")
        .and_then(serde_json::Value::as_array)
        .filter(|_| ours)
    else {
        return vec![format!(
            "no rule in the output chain of table ip {NFT_TABLE}"
        )];
    };
    let wanted = [
        (
            json!({"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": ip.to_string()}}),
            "no expression matches the WireServer address",
        ),
        (
            json!({"match": {"op": "!=", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 53}}),
            "no expression excludes the DNS port",
        ),
        (
            json!({"match": {"op": "!=", "left": {"meta": {"key": "skuid"}}, "right": uid}}),
            "no expression excludes the agent's uid",
        ),
        (json!({"drop": null}), "the drop action is missing"),
    ];
    wanted
        .into_iter()
        .filter(|(e, _)| !expr.contains(e))
        .map(|(_, why)| why.to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use crate::env::firewall::testutil::*;
    use crate::env::firewall::{Backend, Ensured, Firewall};
    use crate::os::{Flavour, Output, RecordingRunner};
    use std::rc::Rc;

    #[test]
    fn without_iptables_nft_gets_one_table_with_one_rule() {
        let d = tempfile::tempdir().unwrap();
        let runner = Rc::new(RecordingRunner::new());
        runner.respond(|c| (c.program == "iptables").then(|| not_found(c)));
        runner.push("nft", Output::ok("nftables v1.0.6 (Lester Gooch #5)\n"));
        runner.push(
            "nft",
            Output::ok(r#"{"nftables": [{"metainfo": {"version": "1.0.6"}}]}"#),
        );
        let os = crate::os::for_env(env(d.path(), Flavour::Debian, runner.clone()));
        let fw = Firewall::detect(&*os, WIRE, 0).unwrap();
        assert_eq!(
            fw.backend(),
            &Backend::Nft {
                version: "nftables v1.0.6 (Lester Gooch #5)".into()
            }
        );
        assert_eq!(fw.ensure().unwrap(), Ensured::Set);
        assert_eq!(
            runner.lines(),
            [
                "iptables --version",
                "nft --version",
                "nft --json list tables",
                "nft -f -"
            ]
        );
        let script = runner.calls()[3].stdin.clone().unwrap();
        assert_eq!(
            String::from_utf8(script).unwrap(),
            "add table ip walinuxagent\n\
             add chain ip walinuxagent output { type filter hook output priority 0 ; policy accept ; }\n\
             add rule ip walinuxagent output ip daddr 168.63.129.16 tcp dport != 53 skuid != 0 ct state invalid,new counter drop\n"
        );
    }

    /// `nft --json list table walinuxagent` as nft 1.0.6 prints our rule.
    fn nft_table(ip: &str, uid: u32) -> String {
        format!(
            r#"{{"nftables": [{{"metainfo": {{"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}}}}, {{"table": {{"family": "ip", "name": "walinuxagent", "handle": 1}}}}, {{"chain": {{"family": "ip", "table": "walinuxagent", "name": "output", "handle": 1, "type": "filter", "hook": "output", "prio": 0, "policy": "accept"}}}}, {{"rule": {{"family": "ip", "table": "walinuxagent", "chain": "output", "handle": 2, "expr": [{{"match": {{"op": "==", "left": {{"payload": {{"protocol": "ip", "field": "daddr"}}}}, "right": "{ip}"}}}}, {{"match": {{"op": "!=", "left": {{"payload": {{"protocol": "tcp", "field": "dport"}}}}, "right": 53}}}}, {{"match": {{"op": "!=", "left": {{"meta": {{"key": "skuid"}}}}, "right": {uid}}}}}, {{"match": {{"op": "in", "left": {{"ct": {{"key": "state"}}}}, "right": ["invalid", "new"]}}}}, {{"counter": {{"packets": 0, "bytes": 0}}}}, {{"drop": null}}]}}}}]}}"#
        )
    }

    #[test]
    fn nft_rule_is_checked_expression_by_expression() {
        let tables = r#"{"nftables": [{"metainfo": {}}, {"table": {"family": "ip", "name": "walinuxagent", "handle": 1}}]}"#;
        let d = tempfile::tempdir().unwrap();
        let runner = Rc::new(RecordingRunner::new());
        let os = crate::os::for_env(env(d.path(), Flavour::Debian, runner.clone()));
        let e = os.env();
        let fw = Firewall::new(
            e,
            Backend::Nft {
                version: "1".into(),
            },
            WIRE,
            0,
        );

        runner.push("nft", Output::ok(tables));
        runner.push("nft", Output::ok(&nft_table("168.63.129.16", 0)));
        assert_eq!(fw.ensure().unwrap(), Ensured::AlreadySet);
        assert_eq!(
            runner.lines(),
            [
                "nft --json list tables",
                "nft --json list table walinuxagent"
            ]
        );

        // Another address and uid: not ours; the table is made again.
        runner.push("nft", Output::ok(tables));
        runner.push("nft", Output::ok(&nft_table("10.0.0.1", 1000)));
        assert_eq!(
            fw.ensure().unwrap(),
            Ensured::Repaired(
                "no expression matches the WireServer address; no expression excludes the agent's uid"
                    .into()
            )
        );
        assert_eq!(
            runner.lines()[2..],
            [
                "nft --json list tables",
                "nft --json list table walinuxagent",
                "nft delete table walinuxagent",
                "nft -f -"
            ]
        );

        // Output that is not JSON is an error naming the command.
        runner.push("nft", Output::ok("table ip walinuxagent {"));
        assert!(fw
            .check()
            .unwrap_err()
            .to_string()
            .starts_with("cannot parse the output of `nft --json list tables`"));
    }
}
