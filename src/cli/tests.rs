//! The command line's definition: consistent for clap, defaults stated once, values refused.

use super::*;
use clap::CommandFactory;

#[test]
fn clap_definition_is_consistent() {
    Cli::command().debug_assert();
}

/// Every flag of every command, with the command's name.
fn every_flag(command: &clap::Command) -> Vec<(String, clap::Arg)> {
    let mut flags: Vec<(String, clap::Arg)> = command
        .get_arguments()
        .map(|a| (command.get_name().to_string(), a.clone()))
        .collect();
    for sub in command.get_subcommands() {
        flags.extend(every_flag(sub));
    }
    flags
}

#[test]
fn help_states_each_default_once() {
    // A default written in a flag's help and also shown by clap reads
    // "[default: 0, train every weight] [default: 0]".
    for (command, arg) in every_flag(&Cli::command()) {
        let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
        let shown = !arg.get_default_values().is_empty() && !arg.is_hide_default_value_set();
        assert!(
            !(shown && help.contains("[default:")),
            "{command} --{}: the default is written in its help and shown by clap",
            arg.get_id()
        );
    }
}

#[test]
fn the_search_needs_no_subcommand() {
    let cli = Cli::try_parse_from([
        "maxbatch",
        "--model",
        "mlp",
        "--memory",
        "4GiB",
        "--dataset-size",
        "100",
    ])
    .unwrap();
    assert!(cli.command.is_none());
    assert_eq!(cli.search.trial.device.memory, Some(4 << 30));
    assert_eq!(
        cli.search.trial.device.device,
        Devices(vec![DeviceRequest::Auto])
    );
    assert_eq!(cli.search.dataset_size, Some(100));
}

#[test]
fn subcommands_need_no_model_at_top_level() {
    let cli = Cli::try_parse_from(["maxbatch", "models", "--json"]).unwrap();
    assert!(matches!(
        cli.command,
        Some(Command::Models(ModelsArgs { json: true, .. }))
    ));
    let cli =
        Cli::try_parse_from(["maxbatch", "check", "--model", "mlp", "--batch-size", "8"]).unwrap();
    assert!(matches!(cli.command, Some(Command::Check(c)) if c.batch_size == 8));
}

#[test]
fn bad_values_are_refused() {
    for args in [
        vec!["maxbatch"],
        vec!["maxbatch", "--model", "mlp", "--memory", "lots"],
        vec!["maxbatch", "--model", "mlp", "--device", "tpu:0"],
        vec!["maxbatch", "--model", "mlp", "--device", "cuda:0,cpu"],
        vec!["maxbatch", "--model", "mlp", "--optimizer", "lion"],
        vec!["maxbatch", "check", "--batch-size", "4"],
        vec!["maxbatch", "--model", "mlp", "--config", "c.json"],
        vec!["maxbatch", "--model", "mlp", "--dtype", "int4"],
        vec!["maxbatch", "--model", "mlp", "--amp", "f32"],
        vec!["maxbatch", "--model", "mlp", "--lora-alpha", "8"],
    ] {
        assert!(Cli::try_parse_from(&args).is_err(), "{args:?} parsed");
    }
}
