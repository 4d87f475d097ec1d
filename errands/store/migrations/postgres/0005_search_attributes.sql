-- errands schema 5: search attributes. (Version 4 is another change's: a
-- store applies whatever versions above its own it lacks, in order.)
--
-- An execution's typed values are kept twice: as JSON on its row, for
-- describe and list to return, and a row per value in search_attributes,
-- for queries (see errands/store/_where.py for why this layout). Both are
-- written in the start's transaction and deleted with the execution.

ALTER TABLE executions ADD COLUMN search_attributes text;  -- {"name": ["KEYWORD", value], ...}

-- The type of each name, fixed by the first start that used it.
CREATE TABLE search_attribute_names (
    namespace text NOT NULL,
    name text NOT NULL,
    type text NOT NULL,                 -- KEYWORD TEXT INT DOUBLE BOOL DATETIME KEYWORD_LIST
    PRIMARY KEY (namespace, name)
);

-- A row per execution and name, or per distinct element of a keyword list.
CREATE TABLE search_attributes (
    execution_id bigint NOT NULL,       -- executions.id
    namespace text NOT NULL,
    name text NOT NULL,
    position integer NOT NULL,          -- the element's place in a keyword list, else 0
    text_value text,                    -- KEYWORD, TEXT, KEYWORD_LIST
    int_value bigint,                   -- INT, BOOL (0, 1), DATETIME (microseconds since the epoch)
    float_value float8,                 -- DOUBLE
    PRIMARY KEY (execution_id, name, position)
);

-- One range per (name, value), in execution order: listing newest first
-- walks it backwards and stops after a page.
CREATE INDEX search_attributes_text ON search_attributes (namespace, name, text_value, execution_id)
    WHERE text_value IS NOT NULL;
CREATE INDEX search_attributes_int ON search_attributes (namespace, name, int_value, execution_id)
    WHERE int_value IS NOT NULL;
CREATE INDEX search_attributes_float ON search_attributes
    (namespace, name, float_value, execution_id) WHERE float_value IS NOT NULL;
