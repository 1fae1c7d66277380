package node

// PreferTCPRanker exposes the dial ranker to the external tests.
var PreferTCPRanker = preferTCPRanker
