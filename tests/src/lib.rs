//! Harness for tests that start real `proglog` processes.
//!
//! Empty until the agent serves gRPC (issue 4): the WAL's own tests,
//! including its crash test, live next to the code in `proglog-agent`.
