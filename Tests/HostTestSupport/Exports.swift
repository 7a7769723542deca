// The pure shared test support (Tests/TestSupport) comes with the host traits.
@_exported import TestSupport
