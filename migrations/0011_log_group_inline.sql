-- A log's queue group is now an expression inside the statements that need it
-- (hookq_core::logs::group_sql): as a SQL function with sub-selects it could not be
-- inlined, and its body was parsed and planned again in every intake statement.
DROP FUNCTION hookq_log_group(text, text, text, text);
