//! Measures how deep each statement shape may nest before rewriting it
//! overflows a stack of a given size (the per-level costs in
//! `rewrite::scan` come from this; bench/RESULTS.md has the numbers).
//!
//! `cargo run --release --example stack_probe -p switchyard-rules -- SHAPE DEPTH STACK_BYTES`
//! prints `ok` or aborts with a stack overflow; bisect DEPTH in a shell.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use switchyard_rules::fixtures::users;
use switchyard_rules::{ActiveRules, Phase};

fn sql(shape: &str, n: usize) -> String {
    match shape {
        "from" => format!(
            "select * from {}users{} x",
            "(select * from ".repeat(n),
            ") s".repeat(n)
        ),
        "scalar" => format!(
            "select {}email from users{}",
            "(select ".repeat(n),
            ")".repeat(n)
        ),
        "in" => format!(
            "select 1 from users where id in {}1{}",
            "(select ".repeat(n),
            ")".repeat(n)
        ),
        "lower" => format!(
            "select {}email{} from users",
            "lower(".repeat(n),
            ")".repeat(n)
        ),
        "case" => format!(
            "select {}email{} from users",
            "case when true then ".repeat(n),
            " end".repeat(n)
        ),
        "paren" => format!("select {}email{} from users", "(".repeat(n), ")".repeat(n)),
        "concat" => format!(
            "insert into users(email) values ({})",
            vec!["'x'"; n].join("||")
        ),
        "plus" => format!("select {} from users", vec!["1"; n].join("+")),
        "and" => format!(
            "select 1 from users where {}",
            vec!["email = 'a'"; n].join(" and ")
        ),
        _ => panic!(),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (shape, n, stack): (&str, usize, usize) =
        (&args[1], args[2].parse().unwrap(), args[3].parse().unwrap());
    let text = sql(shape, n);
    let rules = ActiveRules::compile(users(Phase::ReadsSwitched.routing().unwrap())).unwrap();
    let r = std::thread::Builder::new()
        .stack_size(stack)
        .spawn(move || {
            let out = rules.rewrite(&text, &["public".to_string()]);
            matches!(out, switchyard_rules::Rewrite::Rewritten(..))
        })
        .unwrap()
        .join()
        .unwrap();
    println!("ok {r}");
}
