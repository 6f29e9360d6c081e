// COIN-OR CBC (MILP) and its LP solver CLP, C interfaces (EPL-2.0): the policy search's LPs and
// the cluster planner's MILPs.
#include <Cbc_C_Interface.h>
#include <Clp_C_Interface.h>
