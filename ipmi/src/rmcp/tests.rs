//! Tests of the RMCP+ client.
