//! Migration and routing model for Switchyard (pure logic, no I/O).
